"""The trainer: one readable loop that follows a plan, checkpoints atomically and resumes exactly."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._errors import ConfigError, PartwiseError
from .._model._guard import grad_report
from .._model._parts import Parts
from .._optim._fingerprint import data_fingerprint
from .._optim._optimizers import OptimizerSet, load_state_by_name
from .._optim._plan import PhaseSpan, Plan
from .._run import _checkpoint as ckpt
from .._run import _failpoints
from .._run._layout import AVERAGED, BEST, LATEST
from .._run._runfolder import RunFolder
from . import _distributed as dist
from . import _fsdp as fsdp
from ._cache import EncoderCache, PhaseCache
from ._callbacks import Callback, callback_states, load_callback_states, notify
from ._driver import PlanDriver
from ._loader import eval_batches, make_loader, move_to, uneven_split
from ._resume import SELF, restore
from ._steps import EpochCursor, forward_backward, optimizer_update
from ._task import StepContext, Task, as_task
from ._trainer_args import EarlyStopping, check_fit, device_for, option_problems, precision_problem

__all__ = ["Trainer", "NonFiniteLoss", "EarlyStopping"]


class NonFiniteLoss(PartwiseError, FloatingPointError):
    """The loss or gradient norm became NaN or infinite (``on_nonfinite="stop"``)."""


def _better(value: float, best: float | None, mode: str) -> bool:
    return best is None or (value < best if mode == "min" else value > best)


class Trainer:
    """Train ``model`` by ``plan``. Every argument, the plan and the metrics early stopping and
    ``best_metric`` need are checked before the first step, all problems reported at once
    (:class:`~partwise.ConfigError`). :meth:`fit` then runs, in this order:

    - per optimizer step, for each of ``grad_accum`` micro-batches: read the batch -> (at a phase's
      first step: enter the phase: freeze state, optimizer options, cache, DDP wrapper,
      ``on_phase_start``) -> forward under autocast -> backward of ``loss / grad_accum``;
    - then the update: (fp16: unscale once) -> clip and measure the gradient norm -> read loss and
      norm to the host once (averaged over ranks) -> a NaN/inf drops the gradients and skips the step
      (or stops); otherwise set the phase's scheduled LR -> ``optimizer.step()`` (fp16: the scaler's
      step, then its update) -> ``zero_grad``;
    - then ``on_step_end`` -> a checkpoint every ``save_every`` steps (except on an epoch's last step);
    - at an epoch's end: evaluate -> add the metrics to the history -> best checkpoint and early
      stopping -> checkpoint -> ``on_epoch_end``.

    Args:
        model, parts, plan: the model, its part registry and the plan to follow.
        task: a :class:`~partwise.Task` or a plain ``loss_fn(model, batch) -> loss``.
        run_dir: where checkpoints go (``None``: no checkpoints).
        batch_size, collate_fn: used when ``fit`` gets a dataset (or a list) rather than a DataLoader.
        seed: seeds torch and the data order.
        device: ``"auto"`` (CUDA if available, else CPU), or any torch device available here.
        precision: ``"fp32"``, ``"bf16"`` (CPU or CUDA autocast) or ``"fp16"`` (CUDA, with loss scaling).
        grad_clip: max global gradient norm, or part -> max norm (per-part clipping).
        grad_accum: micro-batches per optimizer step.
        on_nonfinite: a NaN/inf loss or gradient norm (with or without clipping) skips the step
            (``"skip"``: counted in ``skipped_steps``, with a warning) or raises :class:`NonFiniteLoss`
            (``"stop"``). Under fp16 an overflowing gradient is the loss scaler's business: it skips
            the step and lowers the scale (counted in ``skipped_steps``, never a stop).
        early_stopping / best_metric: stop on a plateau; keep the best checkpoint by ``(metric, mode)``.
            A metric is ``train_loss`` or one the task's ``evaluate`` returns (``"wer"`` or ``"dev_wer"``).
            Under DDP rank 0 evaluates and every rank takes its metrics, so all decide alike.
        save_every: also checkpoint every N optimizer steps (always at each epoch end).
        callbacks: objects with any of the :class:`~partwise.Callback` hooks: ``on_phase_start(trainer,
            span)``, ``on_step_end(trainer, logs)`` (``logs["grad_norm"]`` is the real norm, ``None``
            when there were no gradients), ``on_epoch_end(trainer, metrics)``, ``on_plan_change(trainer,
            changes)``, and ``state_dict()``/``load_state_dict()`` (saved with checkpoints).
        guard: wrap training in a :class:`~partwise.FrozenGuard` re-armed at each phase.
        cache: frozen-encoder output cache (see :class:`~partwise.EncoderCache`): ``"auto"`` uses it whenever the
            task supports it and the encoder is frozen, in eval mode and deterministic; ``"on"`` makes
            that a requirement (a :class:`~partwise.ConfigError` says why not); ``"off"`` never caches.
        average_last: at the end of ``fit``, average the weights of the last N epoch-end checkpoints
            (kept for it) and make the average ``best`` if it beats the best epoch on ``best_metric``
            (see :meth:`consider_average`; needs ``run_dir`` and ``best_metric``).
        checkpoint_parts: ``"all"`` (every part in every checkpoint) or ``"trained"``: only the parts
            some phase of the plan trains (adapters, a new head); the others are recorded by a digest,
            and loading the checkpoint (resume) needs a model that holds them as they were.
        distributed: under ``torchrun``, ``"ddp"`` (every rank holds the whole model; only what trains
            is all-reduced) or ``"fsdp2"``: the model is sharded part by part (:func:`partwise.shard`;
            ``trainer.parts`` is then the registry of the sharded model), checkpoints hold every rank's
            shards (``torch.distributed.checkpoint``) beside the whole weights per part. One process:
            neither applies.
        fsdp_units: module path patterns sharded as units of their own inside a part (``"fsdp2"``),
            e.g. ``["encoder.layers.*"]``.
    """

    def __init__(
        self, model: nn.Module, parts: Parts, plan: Plan, task: Task | Callable[..., torch.Tensor], *,
        run_dir: str | Path | None = None, batch_size: int = 32, collate_fn: Callable[..., Any] | None = None,
        seed: int = 0, device: str | torch.device = "auto", precision: str = "fp32",
        grad_clip: float | Mapping[str, float] | None = None, grad_accum: int = 1, on_nonfinite: str = "skip",
        early_stopping: EarlyStopping | None = None, best_metric: tuple[str, str] | None = None,
        save_every: int | None = None, callbacks: Sequence[Callback | object] = (), guard: bool = False,
        cache: str = "auto", average_last: int | None = None, checkpoint_parts: str = "all",
        distributed: str = "ddp", fsdp_units: Sequence[str] = (),
    ):
        self.model, self.parts, self.plan = model, parts, plan
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.batch_size, self.collate_fn, self.seed = batch_size, collate_fn, seed
        self.precision, self.grad_clip, self.grad_accum = precision, grad_clip, grad_accum
        self.on_nonfinite = on_nonfinite
        self.early_stopping, self.best_metric, self.save_every = early_stopping, best_metric, save_every
        self.use_guard, self.cache_mode, self.average_last = guard, cache, average_last
        self.checkpoint_parts, self.distributed, self.fsdp_units = checkpoint_parts, distributed, fsdp_units
        self._digests: dict[str, str] | None = None  # checkpoint_parts="trained": the untrained parts' digests
        device_, device_problem = device_for(device)
        errors = option_problems(self) + ([device_problem] if device_problem else [])
        precision_error = precision_problem(precision, device_) if device_ is not None else None
        errors += [precision_error] if precision_error else []
        self.task = as_task(task)
        try:  # the plan's phases are the driver's: it checks the plan against the parts
            self.driver = PlanDriver(parts, plan, task=self.task, guard=guard is True, rebuild=True)
        except ConfigError as e:
            errors += e.errors
        if errors:
            raise ConfigError(errors)
        if device_ is None:  # unreachable: a device problem raised above
            raise ConfigError([f"device: {device!r} cannot be used"])
        self.device, self.callbacks = device_, list(callbacks)
        self.cache: EncoderCache | None = None
        self._train_loader: Any = None
        self.scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
        self.rank, self.world = dist.rank_and_world()
        self.model.to(self.device)
        self.sharded = distributed == "fsdp2" and self.world > 1
        self._root = dist.LossModule(model, self.task)  # what computes the loss: FSDP2's root
        if self.sharded:  # the registry and the driver follow the sharded parameters
            self.parts = parts = fsdp.shard(model, parts, units=fsdp_units, root=self._root)
            self.driver = PlanDriver(parts, plan, task=self.task, guard=guard is True, rebuild=True)
        self._phase_cache = PhaseCache(self.task, parts, cache, device=self.device, rank=self.rank, world=self.world,
                                       spill_dir=self.run.cache if self.run else None)
        self.step, self.epoch = 0, 0
        self.history: list[dict[str, Any]] = []
        self.best: float | None = None  # best value of best_metric
        self.skipped_steps, self._stale_evals = 0, 0
        self._stop_best: float | None = None  # early stopping's best value
        self._data: dict[str, Any] = {}  # the training data's fingerprint (set when fit starts)
        self.data_changes: list[str] = []  # accepted on resume with allow_data_change=True
        self._epoch_loss = (0.0, 0)  # sum and count of this epoch's step losses
        self._saved_at, self._steps_per_epoch = -1, 0
        self._best_name: str | None = None  # the checkpoint the "best" pointer names
        self.averaged: dict[str, Any] | None = None  # what consider_average() found (average_last)
        self.stop_reason: str | None = None  # why the last fit() ended: the plan's end, early stopping, a limit

    # -- phases ------------------------------------------------------------------------------
    @property
    def span(self) -> PhaseSpan | None:
        """The phase running now (``None`` until the first step entered one)."""
        return self.driver.span

    @property
    def optimizer(self) -> torch.optim.Optimizer | OptimizerSet | None:
        """The run's optimizer (the driver's; ``None`` until the first step or a resume built it)."""
        return self.driver.optimizer

    @property
    def plan_changes(self) -> list[str]:
        """Plan changes accepted on resume with ``allow_plan_change=True``, oldest first."""
        return self.driver.plan_changes

    def _phase_entered(self, span: PhaseSpan) -> None:
        """What this loop adds once the driver entered a phase (freeze state, optimizer options,
        warmup, task options; see :class:`~partwise.PlanDriver`): the cache, the DDP wrapper and
        ``on_phase_start``."""
        self.cache = self._setup_cache()
        self.wrapped = self._cached_loss if self.cache is not None else self._loss_fn()
        notify(self.callbacks, "on_phase_start", self, span)
        _failpoints.reached("phase.entered")

    def _setup_cache(self) -> EncoderCache | None:
        """The encoder-output cache for this phase (kept, built or dropped: :class:`~partwise.PhaseCache`)."""
        loader = self._train_loader
        with fsdp.gathered(self._root):  # each rank encodes its own rows: no unit may wait for the others
            cache = self._phase_cache.enter_phase(loader.dataset if loader is not None else None,
                                                  loader.collate_fn if loader is not None else None)
        if cache is not None:
            self._cache_loss = self._loss_fn(encodings=cache)
        return cache

    def _cached_loss(self, batch: Any, ctx: StepContext) -> torch.Tensor:
        """The loss from cached encoder outputs (checked against live ones on the first batch; if they
        differ, training goes on without the cache)."""
        if not self._phase_cache.check(batch):
            self.cache = None
            self.wrapped = self._loss_fn()
            return self.wrapped(batch, ctx)
        return self._cache_loss(batch, ctx)

    def _loss_fn(self, encodings: EncoderCache | None = None) -> Callable[[Any, Any], torch.Tensor]:
        """The step's loss: through DDP under torchrun, FSDP2's root module when sharded (which
        synchronises itself), the loss module alone in one process."""
        if self.sharded:
            self._root.encodings = encodings
            return self._root
        return dist.wrap(self.model, self.task, self.world, encodings=encodings)

    # -- the loop ----------------------------------------------------------------------------
    def fit(self, train_data: Any, dev_data: Any = None, resume: str | Path | None = None,
            max_steps: int | None = None, max_minutes: float | None = None,
            allow_plan_change: bool = False, allow_data_change: bool = False) -> list[dict[str, Any]]:
        """Train until the plan ends, early stopping fires, or ``max_steps`` optimizer steps or
        ``max_minutes`` of wall time are done (a checkpoint is then written, as if the run were
        interrupted, and ``resume`` continues it). Returns the epoch history.

        ``train_data``: a map-style dataset (a list included) or a DataLoader, whose settings are
        kept. ``resume``: a run directory or checkpoint; it must have been trained under this plan,
        unless ``allow_plan_change`` (e.g. to extend the last phase), and on the same training data
        (rows, contents, batch size, grad_accum, seed), unless ``allow_data_change``; an accepted
        change is recorded (``plan_changes``, ``data_changes``).
        Afterwards ``stop_reason`` says why it ended (the plan's end, early stopping, a limit).
        """
        check_fit(self, dev_data, max_steps, max_minutes)
        self.stop_reason = None
        torch.manual_seed(self.seed)
        cursor = self._start(train_data, max_steps, max_minutes)
        if resume is not None:
            restore(self, resume, cursor.steps_per_epoch, allow_plan_change, allow_data_change)
        while not cursor.finished(self.step):
            self.epoch = cursor.epoch_of(self.step)
            self.parts.train()  # model.train(); frozen parts' norm/dropout stay pinned to eval
            for micro_batches in cursor.steps(self.step):
                loss_sum = self._accumulate(micro_batches)  # forward + backward each (a new phase entered first)
                loss, norm = self._update(loss_sum)  # unscale, clip, check, schedule, step, zero_grad
                self.step += 1
                _failpoints.reached("step.done")
                self._end_step(loss, norm, ends_epoch=cursor.ends_epoch(self.step))
                if cursor.out_of_time():
                    break
            if cursor.ends_epoch(self.step) and self._end_epoch(dev_data, cursor):
                es = self.early_stopping
                self.stop_reason = (f"early stopping: {es.metric} did not improve in {es.patience} evaluations"
                                    if es else "early stopping")
                break
        return self._finish(dev_data, cursor)

    def _start(self, train_data: Any, max_steps: int | None, max_minutes: float | None) -> EpochCursor:
        """The training loader and the cursor over its epochs; removes what a killed save left."""
        loader = make_loader(train_data, self.batch_size, self.seed, self.collate_fn, self.rank, self.world)
        self._train_loader = loader
        self._phase_cache.reset()  # a cache belongs to one fit's training data
        self.cache = None
        steps_per_epoch = self._steps_per_epoch = len(loader) // self.grad_accum
        if steps_per_epoch < 1:
            raise ConfigError([f"train_data: {len(loader)} batch(es) per epoch make no optimizer step with "
                               f"grad_accum={self.grad_accum}; give more data or a smaller batch size"])
        self.driver.set_steps_per_epoch(steps_per_epoch)
        total = self.driver.total_steps()
        if self.world > 1 and (problem := uneven_split(loader, self.world, -(-total // steps_per_epoch))):
            raise ConfigError([problem])
        given = train_data.batch_sampler if isinstance(train_data, torch.utils.data.DataLoader) else None
        self._data = data_fingerprint(loader.dataset, grad_accum=self.grad_accum, seed=self.seed,
                                      batch_size=getattr(given, "batch_size", None) if given else self.batch_size)
        if self.run is not None and self.rank == 0:
            ckpt.remove_debris(self.run.checkpoints)  # what a killed save left
        return EpochCursor(loader, steps_per_epoch, self.grad_accum, total, max_steps, max_minutes)

    def _finish(self, dev_data: Any, cursor: EpochCursor) -> list[dict[str, Any]]:
        """Out of time mid-epoch: evaluate the partial epoch; stopped by ``max_steps`` or
        ``max_minutes``: checkpoint (resumable from here); then the guard's last check."""
        if self.stop_reason is None:
            self.stop_reason = ("max_minutes reached" if cursor.timed_out else "max_steps reached"
                                if cursor.interrupted(self.step) else "the plan's end")
        if cursor.timed_out and not cursor.ends_epoch(self.step):
            self._end_epoch(dev_data, cursor)
        if cursor.interrupted(self.step) and self._saved_at != self.step:
            self.save()
        if self.average_last and dev_data is not None:
            self.consider_average(dev_data)
        self.driver.finish()  # the guard's last check
        return self.history

    def _accumulate(self, micro_batches: Iterable[Any]) -> torch.Tensor:
        """Forward and backward of one optimizer step's micro-batches; the phase the plan puts this
        step in is entered first (once its first micro-batch is read). Returns the sum of the
        micro-batch losses, detached and left on the device (read to the host once per step)."""
        loss_sum: torch.Tensor | None = None
        for i, batch in enumerate(micro_batches):
            entered = i == 0 and self.driver.before_step(self.step)  # the step's phase and learning rates
            if entered:
                self._phase_entered(self.running()[0])
                self.parts.train()
            loss = self._forward_backward(batch, self.running()[0])
            if entered:
                self._check_gradients()
            loss_sum = loss if loss_sum is None else loss_sum + loss
        if loss_sum is None:
            raise ConfigError(["train_data: the DataLoader yielded fewer batches than its len() says"])
        return loss_sum

    def _forward_backward(self, batch: Any, span: PhaseSpan) -> torch.Tensor:
        """One micro-step: forward and backward of one micro-batch; returns its loss, detached."""
        batch = move_to(batch, self.device)
        ctx = StepContext(self.step, self.epoch, span.phase.name, span.phase.task_options)
        return forward_backward(lambda: self.wrapped(batch, ctx), self.device, self.precision, self.grad_accum,
                                self.scaler)

    def _check_gradients(self) -> None:
        """After a phase's first backward: warn of a part the phase trains that received no gradient
        (its loss path is cut: a ``no_grad``, a ``detach``, an unused module). One process only: DDP
        reports unused parameters itself."""
        if self.world > 1:
            return
        report = grad_report(self.parts)
        cut = [p for p in self.running()[0].phase.train if not report.received(p)]
        if cut:
            warnings.warn(f"phase {self.running()[0].phase.name!r}: part(s) {', '.join(map(repr, cut))} train in this "
                          "phase but received no gradient from its first batch: is their path to the loss cut (a "
                          "torch.no_grad(), a .detach(), a module the loss does not use)?", RuntimeWarning,
                          stacklevel=4)

    def running(self) -> tuple[PhaseSpan, torch.optim.Optimizer | OptimizerSet]:
        """The phase running now and the run's optimizer (both set once ``fit`` entered a phase)."""
        if self.span is None or self.optimizer is None:
            raise RuntimeError("partwise internal error: no phase has been entered yet")
        return self.span, self.optimizer

    def _update(self, loss_sum: torch.Tensor) -> tuple[float, float | None]:
        """The optimizer update (``optimizer_update``; the driver set the step's learning rates); a
        step not applied (NaN/inf, fp16 overflow) is counted in ``skipped_steps``. Returns the step's
        loss and gradient norm."""
        optimizer = self.running()[1]
        result = optimizer_update(
            optimizer, loss_sum, grad_accum=self.grad_accum, grad_clip=self.grad_clip, scaler=self.scaler,
            world=self.world, on_nonfinite=self._nonfinite)
        if result.applied:
            self._epoch_loss = (self._epoch_loss[0] + result.loss, self._epoch_loss[1] + 1)
        else:
            self.skipped_steps += 1
        return result.loss, result.grad_norm

    def _nonfinite(self, what: str) -> None:
        """A NaN/inf loss or gradient (its gradients already dropped): stop, or warn and skip the step
        (the batch is consumed and the step counter moves on, so the data order stays that of the plan)."""
        if self.on_nonfinite == "stop":
            raise NonFiniteLoss(f"{what} at step {self.step} (phase {self.running()[0].phase.name!r}); "
                                "nothing after the last good checkpoint was saved. "
                                "Lower the learning rate or clip gradients.")
        warnings.warn(f"skipped step {self.step}: {what}", RuntimeWarning, stacklevel=4)

    def _end_step(self, loss_value: float, norm: float | None, ends_epoch: bool) -> None:
        """Log the step (callbacks), then checkpoint every ``save_every`` steps — except on an epoch's
        last step, whose checkpoint the epoch end writes after its evaluation: a checkpoint taken
        before it would resume past an epoch end that never happened."""
        logs = {"step": self.step, "loss": loss_value, "grad_norm": norm, **self.lrs()}
        notify(self.callbacks, "on_step_end", self, logs)
        _failpoints.reached("step.logged")
        if self.save_every and self.step % self.save_every == 0 and not ends_epoch:
            self.save()

    def _end_epoch(self, dev_data: Any, cursor: EpochCursor) -> bool:
        """Evaluate (rank 0; its metrics go to every rank), keep the best checkpoint, and say whether
        early stopping fires (the same answer on every rank). In this order: evaluate, add the metrics
        to the history, decide best and early stopping, checkpoint, then tell the callbacks — so the
        checkpoint holds the whole epoch end (its history is what ``metrics.csv`` is rebuilt from on
        resume), and a kill before it replays the epoch end from the previous checkpoint."""
        total, n = self._epoch_loss
        self._epoch_loss = (0.0, 0)
        metrics: dict[str, Any] = {"epoch": self.epoch + 1, "step": self.step, "phase": self.running()[0].phase.name,
                                   "train_loss": total / max(n, 1), "seconds": cursor.epoch_seconds(), **self.lrs()}
        if dev_data is not None:
            with fsdp.gathered(self._root):  # a sharded model whole on every rank while rank 0 evaluates
                scores: dict[str, Any] | None = self._evaluate(dev_data) if self.rank == 0 else None
            received = dist.broadcast_object(scores, self.world)
            metrics.update({f"dev_{k}": v for k, v in (received or {}).items()})
        _failpoints.reached("epoch.evaluated")
        self.history.append(metrics)
        improved, stop = self._decide(metrics)
        self.save(best=improved, epoch_end=True)
        _failpoints.reached("epoch.saved")
        notify(self.callbacks, "on_epoch_end", self, metrics)
        _failpoints.reached("epoch.logged")
        cursor.restart_clock()  # the next epoch's seconds start after this one's end
        return stop

    def consider_average(self, dev_data: Any) -> dict[str, Any] | None:
        """Average the weights of the last ``average_last`` epoch-end checkpoints
        (:func:`~partwise.average_checkpoints`, into ``checkpoints/averaged``), evaluate the average on
        ``dev_data``, and point ``best`` at it when it beats the best epoch on ``best_metric``. The
        model keeps its own weights. Rank 0 only; returns (and keeps in ``averaged``) what it found:
        the checkpoints averaged, the average's dev metrics and whether it became ``best``; ``None``
        when fewer than two epoch-end checkpoints exist. An average of the same checkpoints already on
        disk (a process killed before it decided) is reused, so calling this again decides again."""
        from .._run._average import average_checkpoints

        if self.run is None or self.rank != 0 or not self.best_metric or not self.average_last:
            return None
        root = self.run.checkpoints
        last = ckpt.epoch_end_checkpoints(root)[-self.average_last:]
        if len(last) < 2:
            warnings.warn(f"average_last={self.average_last}: only {len(last)} epoch-end checkpoint(s); "
                          "nothing averaged", RuntimeWarning, stacklevel=2)
            return None
        out = ckpt.averaged_checkpoint(root, [p.name for p in last]) or average_checkpoints(last, root / AVERAGED)
        _failpoints.reached("average.written")
        own = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        try:
            ckpt.load_weights(self.model, self.parts, out)
            scores = self._evaluate(dev_data)
        finally:
            self.model.load_state_dict(own)
        name, mode = self.best_metric
        value = self._metric({f"dev_{k}": v for k, v in scores.items()}, name)
        chosen = _better(value, self.best, mode)
        if chosen:
            ckpt.point(root, BEST, out.name)
            self.best, self._best_name = value, out.name
        ckpt.drop_versions(root, AVERAGED, keep=out.name)
        _failpoints.reached("average.decided")
        self.averaged = {"from": [p.name for p in last], "checkpoint": out.name, "chosen": chosen,
                         **{f"dev_{k}": v for k, v in scores.items()}}
        return self.averaged

    def _evaluate(self, dev_data: Any) -> dict[str, Any]:
        """The task's evaluation, on a forked RNG: whatever it draws (a DataLoader's base seed, sampling)
        leaves the training stream as it was, so a run does not depend on whether it evaluated."""
        self.model.eval()
        dataset = dev_data.dataset if isinstance(dev_data, torch.utils.data.DataLoader) else dev_data
        cuda = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda, device_type="cuda"):
            batches = eval_batches(dev_data, self.batch_size, self.collate_fn, self.device)
            return dict(self.task.evaluate(self.model, batches, dataset))

    def _decide(self, metrics: dict[str, Any]) -> tuple[bool, bool]:
        """``(best_metric improved, early stopping fires)`` from this epoch's metrics."""
        improved = False
        if self.best_metric:
            name, mode = self.best_metric
            value = self._metric(metrics, name)
            improved = _better(value, self.best, mode)
            self.best = value if improved else self.best
        if self.early_stopping is None:
            return improved, False
        es = self.early_stopping
        value = self._metric(metrics, es.metric)
        if _better(value, self._stop_best, es.mode):
            self._stop_best, self._stale_evals = value, 0
        else:
            self._stale_evals += 1
        return improved, self._stale_evals >= es.patience

    def _metric(self, metrics: dict[str, Any], name: str) -> float:
        key = name if name in metrics else f"dev_{name}"
        if key not in metrics:
            raise ConfigError([f"best/early-stopping metric {name!r} not produced by {type(self.task).__name__}; "
                               f"have {sorted(metrics)}; choose one of those, or declare the task's metrics"])
        return float(metrics[key])

    def lrs(self) -> dict[str, float]:
        """Current learning rate per part (``lr/<part>``)."""
        groups = self.optimizer.param_groups if self.optimizer else []
        return {f"lr/{g['part']}": g["lr"] for g in groups if g["params"] and "part" in g}

    # -- checkpoints -------------------------------------------------------------------------
    @property
    def data_fingerprint(self) -> dict[str, Any]:
        """The training data's fingerprint (rows, settings), taken when ``fit`` starts."""
        return self._data

    @property
    def run(self) -> RunFolder | None:
        """The run folder checkpoints go to (``None`` without ``run_dir``)."""
        return RunFolder(self.run_dir) if self.run_dir is not None else None

    def state_dict(self) -> dict[str, Any]:
        """Everything a checkpoint needs to continue the run exactly (keys
        ``partwise._run._checkpoint.STATE_KEYS``; plain types and tensors: safe for
        ``torch.load(weights_only=True)``)."""
        rng: dict[str, Any] = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {"step": self.step, "epoch": self.epoch, "plan": self.driver.state_dict(),
                "optimizer": self.optimizer.state_dict() if self.optimizer else {}, "parts": self.parts.state_dict(),
                "rng": rng, "history": self.history, "best": self.best, "stale_evals": self._stale_evals,
                "stop_best": self._stop_best, "skipped_steps": self.skipped_steps,
                "scaler": self.scaler.state_dict() if self.scaler else {}, "epoch_loss": list(self._epoch_loss),
                "data": self._data, "data_changes": list(self.data_changes),
                "best_checkpoint": self._best_name, "callbacks": callback_states(self.callbacks)}

    def load_state_dict(self, state: dict[str, Any], steps_per_epoch: int, changes: Sequence[str] = (),
                        data_changes: Sequence[str] = (), best_checkpoint: str | None = None) -> None:
        """Restore what :meth:`state_dict` saved, except the plan's state, the weights and the data
        fingerprint, which a resume checks and restores first (:func:`partwise._train._resume.restore`), in
        this order: counters, history and best values; callbacks' states (then ``on_plan_change`` with
        ``plan_changes``); the optimizer's state, in the layout the plan's restored freeze state gives;
        the scaler; the RNG. ``changes``: the plan and data changes accepted by this resume (told to the
        callbacks), ``data_changes`` the data ones (recorded); ``best_checkpoint``: what ``best`` names."""
        ckpt.check_state_keys(state, "state")
        self.step, self.history, self.best = int(state["step"]), list(state["history"]), state["best"]
        self._saved_at = self.step  # this step's checkpoint exists: no second one at the same step
        self.epoch = self.step // steps_per_epoch
        self._stale_evals, self.skipped_steps = int(state["stale_evals"]), int(state["skipped_steps"])
        self._stop_best = state["stop_best"]
        self._epoch_loss = (float(state["epoch_loss"][0]), int(state["epoch_loss"][1]))
        self.data_changes = list(state["data_changes"]) + list(data_changes)
        self._best_name = best_checkpoint
        # before the phase is entered: a callback sees a resumed phase as its own
        load_callback_states(self.callbacks, state["callbacks"])
        if changes:
            notify(self.callbacks, "on_plan_change", self, list(changes))
        load_state_by_name(self.driver.build_optimizer(), state["optimizer"])
        if self.scaler is not None and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["cpu"])
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])

    def save(self, best: bool = False, epoch_end: bool = False) -> Path | None:
        """Write a checkpoint (rank 0; under FSDP2 every rank writes its shards first) atomically;
        returns its directory (``None`` on the other ranks). Its state records the checkpoint
        ``best`` should name (``"."``: this one), which a resume restores. Kept: this one, ``best``,
        and the last ``average_last`` epoch-end checkpoints (mid-epoch saves don't count)."""
        run = self.run
        if run is None or (self.rank != 0 and not self.sharded):
            return None
        self._saved_at = self.step
        meta = {"step": self.step, "epoch": self.epoch, "phase": self.span.phase.name if self.span else None,
                "model": type(self.model).__qualname__, "history": self.history[-1:] if self.history else [],
                "epoch_end": epoch_end}
        state = self.state_dict()
        if best:
            state["best_checkpoint"] = SELF
        only = sorted({p for ph in self.plan.phases for p in ph.train}) if self.checkpoint_parts == "trained" else None
        name, pointers = f"step-{self.step:08d}", (LATEST, BEST) if best else (LATEST,)
        keep = {"keep": 1, "keep_epoch_ends": self.average_last or 0}
        if self.sharded:
            path = self._save_sharded(run, name, state, meta, pointers, only, keep)
        else:
            if only is not None and self._digests is None:  # parts no phase trains: one digest for the whole run
                tensors = ckpt.part_tensors(self.model, self.parts)
                self._digests = {p: ckpt.part_digest(t) for p, t in tensors.items() if p not in only}
            path = ckpt.save_checkpoint(run.checkpoints, name, self.model, self.parts, state, meta, pointers=pointers,
                                        only=only, digests=self._digests, **keep)
        if best and path is not None:
            self._best_name = path.name
        return path

    def _save_sharded(self, run: RunFolder, name: str, state: dict[str, Any], meta: dict[str, Any],
                      pointers: tuple[str, ...], only: list[str] | None, keep: dict[str, int]) -> Path | None:
        """A checkpoint of a sharded model: every rank writes its shards of weights and optimizer
        state into a staging folder; rank 0 gathers the whole weights per part, writes the checkpoint
        around the shards and renames it into place; then every rank goes on."""
        import torch.distributed as tdist

        if only is not None and self._digests is None:
            whole = fsdp.full_part_tensors(self.model, self.parts)
            self._digests = {p: ckpt.part_digest(t) for p, t in whole.items() if p not in only}
        tensors = fsdp.full_part_tensors(self.model, self.parts, only)
        shards, state["optimizer"] = fsdp.sharded_tensors(self.model, self.parts, state["optimizer"], only)
        staging = Path(dist.broadcast_object(str(run.checkpoints / f".{name}.shards.tmp-{os.getpid()}"), self.world))
        fsdp.save_shards(shards, staging)
        path = None
        if self.rank == 0:
            if only is not None:
                meta = {**meta, "unsaved": dict(self._digests or {})}
            path = ckpt.write_checkpoint(run.checkpoints, name, tensors, state, meta, pointers,
                                         folders={fsdp.SHARDS: staging}, **keep)
        tdist.barrier()
        return path
