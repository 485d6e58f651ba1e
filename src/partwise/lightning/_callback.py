"""A Lightning callback that follows a partwise plan through :class:`~partwise.PlanDriver`.

When Lightning calls what, in a ``fit`` (Lightning 2.x, read in its ``Trainer._run``): ``setup``
-> (resume: callback states, so :meth:`PartwisePlan.load_state_dict`) -> the strategy wraps the
module (DDP registers the parameters that require grad then) and calls ``configure_optimizers``
-> ``on_fit_start`` -> (resume: optimizer and scheduler states) -> the loop, which calls
``on_train_batch_start`` before each batch's forward. So the freeze state of the phase in force is
set in ``setup`` (or by the restored state) before DDP sees the model, the optimizer is built with
a group per part in ``configure_optimizers``, and each step enters its phase before its forward.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import lightning.pytorch as L
import torch

from .._errors import ConfigError
from .._model._parts import Parts
from .._optim._optimizers import OptimizerSet, optimizers_of
from .._optim._plan import Plan
from .._train._driver import PlanDriver
from .._train._task import StepContext

__all__ = ["PartwisePlan", "plan_of", "manual_step"]


class PartwisePlan(L.Callback):
    """Follow a :class:`~partwise.Plan` inside ``lightning.pytorch.Trainer.fit``.

    The module's ``configure_optimizers`` returns ``plan_of(self).configure_optimizers()``: one
    optimizer with a group per part from step 0 (frozen parts' groups empty), kept for the whole run,
    so the objects Lightning holds never change. Before each optimizer step's first batch the
    callback enters the phase the plan puts that step in (``trainer.global_step``; under manual
    optimization, the batches trained): freeze/unfreeze through ``Parts``, each part's optimizer
    options, the joining parts' own warmup, per-part learning rates (the plan owns them: attach no
    LR scheduler), the task options. Frozen parts' norm and dropout layers stay in eval through
    Lightning's ``train()``/``eval()`` switching around validation. Under ``strategy="ddp"`` the DDP
    wrapper is rebuilt when a phase changes what trains, so it reduces the gradients of a part
    unfrozen mid-run. With ``guard=True`` the frozen parts are fingerprinted at each phase start and
    checked at its end and when training ends (:class:`~partwise.FrozenPartChanged` fails the fit).
    Its state (the phase, the freeze state, the plan's fingerprint) is saved in Lightning's
    checkpoints; ``trainer.fit(ckpt_path=...)`` restores the freeze state before the optimizer's
    state is loaded, and refuses another plan unless ``allow_plan_change=True``.

    Args:
        parts: the registry of the model the LightningModule trains (``pw.Parts(module.model)``).
        plan: the plan; checked against ``parts`` now (unknown parts, half-frozen tied tensors, optimizer
            options, a part whose optimizer class would change mid-run), every problem at once.
        task: told of each phase start (``enter_phase``), e.g. a seq2seq task.
        guard: check frozen parts bit-identical at each phase end and at the end of training.
        allow_plan_change: resume from a checkpoint made under another plan (the change is warned
            about and recorded in ``driver.plan_changes``).
    """

    def __init__(self, parts: Parts, plan: Plan, *, task: Any = None, guard: bool = False,
                 allow_plan_change: bool = False):
        self.parts = parts
        self.driver = PlanDriver(parts, plan, task=task, guard=guard)
        self.allow_plan_change = allow_plan_change
        self.manual_steps = 0  # batches trained under manual optimization (its step count)
        self._automatic = True
        self._module: L.LightningModule | None = None
        self._ddp_trainable: frozenset[str] | None = None  # what trains in the DDP wrapper now

    # -- optimizers -----------------------------------------------------------------------------
    def configure_optimizers(self) -> torch.optim.Optimizer | list[torch.optim.Optimizer]:
        """What ``LightningModule.configure_optimizers`` returns: the run's optimizer (a group per
        part), or, for ``separate`` plans, one optimizer per part in part order (for manual
        optimization; see :func:`manual_step`)."""
        optimizer = self.driver.build_optimizer()
        if isinstance(optimizer, OptimizerSet) and self._module is not None:
            self._automatic = self._module.automatic_optimization
            self._check_optimizers(None)
        return list(optimizer) if isinstance(optimizer, OptimizerSet) else optimizer

    def context(self, trainer: L.Trainer) -> StepContext:
        """The step's :class:`~partwise.StepContext` (phase name, task options) for a task's ``loss``."""
        return self.driver.context(self._step(trainer), trainer.current_epoch)

    # -- hooks ------------------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._module = pl_module
            self.driver.prepare()  # the first phase's freeze state, before DDP registers parameters

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._automatic = pl_module.automatic_optimization
        self._check_optimizers(trainer)
        steps = self._steps_per_epoch(trainer)
        if steps is not None:
            self.driver.set_steps_per_epoch(steps)
            self._check_length(trainer)
        self._ddp_trainable = self._trainable()

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self.driver.before_step(self._step(trainer)):
            self._rewrap_ddp(trainer)
        self.parts.apply_modes()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not self._automatic:
            self.manual_steps += 1

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.driver.finish()

    def state_dict(self) -> dict[str, Any]:
        return {"driver": self.driver.state_dict(), "manual_steps": self.manual_steps}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.driver.load_state_dict(state_dict["driver"], self.allow_plan_change)
        self.manual_steps = int(state_dict.get("manual_steps", 0))

    # -- helpers ----------------------------------------------------------------------------------
    def _step(self, trainer: L.Trainer) -> int:
        # Lightning counts every optimizer's step() in global_step; under manual optimization several
        # optimizers step per batch, so the plan counts batches there.
        return trainer.global_step if self._automatic else self.manual_steps

    def _check_optimizers(self, trainer: L.Trainer | None) -> None:
        mine = self.driver.optimizer
        if mine is None or trainer is not None and [id(o) for o in trainer.optimizers] != [
                id(o) for o in optimizers_of(mine)]:
            raise ConfigError(["configure_optimizers: return partwise.lightning.plan_of(self).configure_optimizers() "
                               "(one optimizer with a group per part); an optimizer built elsewhere never sees "
                               "the parts a phase unfreezes"])
        if isinstance(mine, OptimizerSet) and self._automatic:
            raise ConfigError(["the plan has separate optimizers per part: Lightning runs several optimizers only "
                               "under manual optimization; set self.automatic_optimization = False in the "
                               "LightningModule and step them with partwise.lightning.manual_step(self, loss)"])

    def _steps_per_epoch(self, trainer: L.Trainer) -> int | None:
        """Optimizer steps per epoch, as Lightning takes them (it steps on an epoch's last batch even
        when an accumulation is incomplete); ``None`` when the plan needs none."""
        if all(ph.steps is not None for ph in self.driver.plan.phases):
            return None
        _ = trainer.estimated_stepping_batches  # sets the training data up, as Lightning documents
        batches = trainer.num_training_batches
        if not math.isfinite(batches):
            raise ConfigError(["plan: phases given in epochs need a training DataLoader with a length; give the "
                               "phases in steps (Phase(steps=N)) for an iterable dataset"])
        per_step = trainer.accumulate_grad_batches if self._automatic else 1
        return max(1, math.ceil(int(batches) / per_step))

    def _check_length(self, trainer: L.Trainer) -> None:
        planned, lightning = self.driver.total_steps(), trainer.estimated_stepping_batches
        if not math.isfinite(lightning) or trainer.global_step or self.manual_steps:
            return  # unbounded, or a resumed run (its length was checked when it started)
        if lightning < planned:
            last = self.driver.span_at(int(lightning)).phase.name if lightning else self.driver.plan.phases[0].name
            warnings.warn(f"Lightning will run {int(lightning)} optimizer steps, the plan {planned}: it stops in "
                          f"phase {last!r}", RuntimeWarning, stacklevel=2)
        elif lightning > planned:
            warnings.warn(f"Lightning will run {int(lightning)} optimizer steps, the plan {planned}: its last phase "
                          f"{self.driver.plan.phases[-1].name!r} goes on past its end", RuntimeWarning, stacklevel=2)

    def _trainable(self) -> frozenset[str]:
        return frozenset(n for n in self.parts.names if not self.parts.is_frozen(n))

    def _rewrap_ddp(self, trainer: L.Trainer) -> None:
        """Rebuild the DDP wrapper when the phase changed what trains: DDP registers the parameters
        that require grad when it is built, and reduces only those. Every rank enters a phase at the
        same step, so every rank rebuilds in lockstep (DDP's constructor is a collective that
        broadcasts rank 0's parameters and buffers)."""
        from lightning.pytorch.strategies import DDPStrategy

        now = self._trainable()
        if not isinstance(trainer.strategy, DDPStrategy) or now == self._ddp_trainable:
            return
        strategy = trainer.strategy
        strategy.model = strategy.lightning_module
        strategy.configure_ddp()
        self._ddp_trainable = now


def plan_of(module_or_trainer: L.LightningModule | L.Trainer) -> PartwisePlan:
    """The :class:`PartwisePlan` among the trainer's callbacks (of a LightningModule's trainer).

    Use it in ``configure_optimizers``: ``return plan_of(self).configure_optimizers()``.
    """
    trainer = module_or_trainer if isinstance(module_or_trainer, L.Trainer) else module_or_trainer.trainer
    found = [cb for cb in trainer.callbacks if isinstance(cb, PartwisePlan)]  # type: ignore[attr-defined]
    if len(found) != 1:
        raise ConfigError([f"callbacks: the Lightning Trainer has {len(found)} PartwisePlan callbacks; give it "
                           "exactly one: L.Trainer(callbacks=[partwise.lightning.PartwisePlan(parts, plan)])"])
    return found[0]


def manual_step(module: L.LightningModule, loss: torch.Tensor, clip: float | None = None) -> None:
    """One step of every optimizer (one per part) under manual optimization: ``zero_grad`` ->
    ``manual_backward(loss)`` -> (``clip``: each part's gradient norm clipped to it, with Lightning's
    ``clip_gradients``) -> ``step``. Frozen parts' optimizers hold no parameter and do nothing."""
    optimizers = module.optimizers()
    optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
    for opt in optimizers:
        opt.zero_grad()
    module.manual_backward(loss)
    for opt in optimizers:
        if clip is not None:
            module.clip_gradients(opt.optimizer, gradient_clip_val=clip, gradient_clip_algorithm="norm")
        opt.step()
