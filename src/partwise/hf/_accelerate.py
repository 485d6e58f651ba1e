"""A partwise plan inside a hand-written ``accelerate`` loop.

What accelerate does when (1.x, read in ``Accelerator.prepare`` / ``save_state`` / ``load_state``):
``prepare(model, optimizer, loader)`` wraps the model in DDP under several processes, and DDP
registers the parameters that require grad *then*; ``load_state`` calls its load pre-hooks, then
loads models, optimizers, schedulers, samplers and RNG states, and only then the objects registered
with ``register_for_checkpointing``. A plan driver registered that way would restore the freeze
state after the optimizer's state was loaded into the wrong groups, so :class:`AcceleratePlan` uses
the pre-hooks instead, and rebuilds the DDP wrapper when a phase changes what trains.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .._errors import ConfigError
from .._optim._optimizers import OptimizerSet
from .._train._driver import PlanDriver

__all__ = ["AcceleratePlan"]


class AcceleratePlan:
    """Follow a :class:`~partwise.PlanDriver`'s plan in an ``accelerate`` loop, with exact resume.

    Build the optimizer from the driver *before* ``accelerator.prepare`` (so the first phase's frozen
    parts are frozen when DDP registers parameters), then call :meth:`before_step` before each
    optimizer step's first forward and use the model it returns: under several processes the DDP
    wrapper is rebuilt, in lockstep on every rank, when a phase changes what trains (DDP reduces the
    gradients only of parameters that required grad when it was built). ``accelerator.save_state``
    writes the plan's state (phase, freeze state, plan fingerprint, steps done) beside accelerate's
    files; ``accelerator.load_state`` restores it *before* the optimizer's state is loaded, so that
    state lands in the groups it was saved from, and refuses another plan unless
    ``allow_plan_change``. :attr:`steps_done` then says where to resume, and :meth:`batches` resumes
    the data there, RNG included.

    Args:
        accelerator: the ``accelerate.Accelerator``.
        driver: the plan driver (``pw.PlanDriver(parts, plan)``; its steps per epoch are the prepared
            loader's length, set by :meth:`batches`, which under several processes is this rank's share).
        allow_plan_change: resume state saved under another plan (warned about, and recorded).

    Example::

        import partwise as pw, partwise.hf as ph
        driver = pw.PlanDriver(ph.parts(model), plan)  # steps per epoch: batches() takes len(loader)
        optimizer = driver.build_optimizer()            # before prepare: phase 0 frozen for DDP
        model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
        plan = ph.AcceleratePlan(accelerator, driver)
        for step, batch in plan.batches(loader):       # resumes at plan.steps_done after load_state
            model = plan.before_step(step, model)       # the phase, per-part LRs, DDP rebuilt if needed
            loss = model(**batch).loss
            accelerator.backward(loss); optimizer.step(); optimizer.zero_grad()
    """

    def __init__(self, accelerator: Any, driver: PlanDriver, *, allow_plan_change: bool = False):
        if not isinstance(driver, PlanDriver):
            raise ConfigError([f"driver: expected a partwise PlanDriver, got {type(driver).__name__}"])
        if driver.optimizer is None:
            raise ConfigError(["driver: build the optimizer with driver.build_optimizer() before "
                               "accelerator.prepare(model, optimizer, ...), so DDP sees the first phase's freeze set"])
        if isinstance(driver.optimizer, OptimizerSet):
            raise ConfigError(["plan: separate=True phases give one optimizer per part; prepare each with "
                               "accelerate, or use one optimizer with a group per part (separate=False)"])
        self.accelerator, self.driver, self.allow_plan_change = accelerator, driver, allow_plan_change
        self.steps_done = 0  # optimizer steps taken (set by load_state on resume)
        self._trainable = self._now_trainable()
        accelerator.register_save_state_pre_hook(self._save)
        accelerator.register_load_state_pre_hook(self._load)

    def before_step(self, step: int, model: nn.Module) -> nn.Module:
        """Enter optimizer step ``step``'s phase and set its learning rates (see
        :meth:`~partwise.PlanDriver.before_step`); returns the model to call (a new DDP wrapper when
        the phase changed what trains under several processes, else ``model``)."""
        self.driver.before_step(step)
        self.steps_done = step + 1  # once this step is taken
        now = self._now_trainable()
        if now != self._trainable and isinstance(model, DistributedDataParallel):
            model = self._rewrap(model)
        self._trainable = now
        return model

    def batches(self, loader: Any, total: int | None = None) -> Iterator[tuple[int, Any]]:
        """``(step, batch)`` for every optimizer step from :attr:`steps_done` to ``total`` (the plan's
        length by default), one batch per step, epoch after epoch (``set_epoch`` called when the
        loader has it). On resume mid-epoch the epoch's first batches are skipped
        (``accelerator.skip_first_batches``) without drawing from the RNG that ``load_state``
        restored, so dropout and sampling continue exactly as in an uninterrupted run. A driver made
        without ``steps_per_epoch`` gets this process's ``len(loader)``."""
        per_epoch = len(loader)
        if per_epoch < 1:
            raise ConfigError(["loader: the training DataLoader is empty"])
        if self.driver.steps_per_epoch is None:  # this process's batches per epoch (after prepare)
            self.driver.set_steps_per_epoch(per_epoch)
        total = self.driver.total_steps() if total is None else total
        step = self.steps_done
        while step < total:
            epoch, skip = divmod(step, per_epoch)
            if hasattr(loader, "set_epoch"):
                loader.set_epoch(epoch)
            batches: Iterator[Any] = iter(self.accelerator.skip_first_batches(loader, skip) if skip else loader)
            if skip:  # a loader draws its iterator's base seed from the global RNG: keep the restored state
                cpu = torch.random.get_rng_state()
                cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
                first = next(batches, None)  # the draw happens at the first batch (iterators are lazy)
                torch.random.set_rng_state(cpu)
                if cuda is not None:
                    torch.cuda.set_rng_state_all(cuda)
                if first is None:
                    return
                batches = itertools.chain([first], batches)
            for batch in batches:
                yield step, batch
                step += 1
                if step >= total:
                    return

    def _now_trainable(self) -> frozenset[str]:
        parts = self.driver.parts
        return frozenset(n for n in parts.names if not parts.is_frozen(n))

    def _rewrap(self, ddp: DistributedDataParallel) -> nn.Module:
        """A new DDP wrapper around the same module, with the accelerator's DDP options, put where the
        accelerator keeps its models (so ``save_state`` and ``unwrap_model`` see it). Every rank enters
        a phase at the same step, so every rank rebuilds together (the constructor is a collective)."""
        handler = getattr(self.accelerator, "ddp_handler", None)
        kwargs = handler.to_kwargs() if handler is not None else {}
        new = DistributedDataParallel(ddp.module, device_ids=ddp.device_ids, output_device=ddp.output_device,
                                      **kwargs)
        if handler is not None:
            handler.register_comm_hook(new)  # as accelerate's prepare does (e.g. fp16 gradient compression)
        models = self.accelerator._models  # accelerate's list of prepared models (no public setter)
        for i, m in enumerate(models):
            if m is ddp:
                models[i] = new
        return new

    def _save(self, models: list[nn.Module], weights: list[Any], output_dir: str) -> None:
        if self.accelerator.is_main_process:
            self.driver.save_file(output_dir, steps_done=self.steps_done)

    def _load(self, models: list[nn.Module], input_dir: str) -> None:
        self.steps_done = int(self.driver.load_file(input_dir, self.allow_plan_change, where="load_state")
                              .get("steps_done", 0))
