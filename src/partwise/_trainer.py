"""The trainer: one readable loop that follows a plan, checkpoints atomically and resumes exactly."""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import _checkpoint as ckpt
from . import _distributed as dist
from . import _failpoints
from ._cache import CacheRefused, EncoderCache, cache_blockers, supports_cache
from ._errors import ConfigError, PartwiseError
from ._fingerprint import plan_differences, plan_fingerprint
from ._loader import eval_batches, make_loader, move_to, start_epoch
from ._optim import (
    OptimizerSet,
    build_optimizer,
    carry_state,
    load_state_by_name,
    optimizers_of,
    reconfigure,
)
from ._parts import Parts
from ._plan import Phase, PhaseSpan, Plan
from ._task import StepContext, Task, as_task, declared_metrics, enter_phase

__all__ = ["Trainer", "NonFiniteLoss", "EarlyStopping"]

SELF = "."  # state["best_checkpoint"] of a checkpoint that is itself the best


class NonFiniteLoss(PartwiseError, FloatingPointError):
    """The loss or gradient norm became NaN or infinite (``on_nonfinite="stop"``)."""


def _dev_key(name: str) -> str:
    """A metric name in today's spelling: the held-out split is ``dev`` (``val_wer`` was the older key)."""
    return f"dev_{name[4:]}" if name.startswith("val_") else name


class EarlyStopping:
    """Stop when ``metric`` has not improved for ``patience`` evaluations."""

    def __init__(self, metric: str = "loss", mode: str = "min", patience: int = 3):
        errors = []
        if not isinstance(metric, str) or not metric:
            errors.append(f"EarlyStopping metric={metric!r} must name a metric, e.g. 'loss'")
        if mode not in ("min", "max"):
            errors.append(f"EarlyStopping mode={mode!r} must be 'min' or 'max'")
        if not _is_int(patience) or patience < 1:
            errors.append(f"EarlyStopping patience={patience!r} must be a whole number >= 1")
        if errors:
            raise ConfigError(errors)
        self.metric, self.mode, self.patience = metric, mode, patience


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_positive(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _better(value: float, best: float | None, mode: str) -> bool:
    return best is None or (value < best if mode == "min" else value > best)


def _device(device: Any) -> tuple[torch.device | None, str | None]:
    """The torch device for ``device``, or a message saying why it cannot be used here."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu"), None
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        return None, f"device: {device!r} is not a device; use 'auto', 'cpu' or 'cuda' (or 'cuda:N')"
    available = getattr(getattr(torch, d.type, None), "is_available", None) or getattr(
        getattr(torch.backends, d.type, None), "is_available", None)
    if d.type != "cpu" and (available is None or not available()):
        return None, f"device: {device!r} is not available on this machine; use 'auto' or 'cpu'"
    if d.type == "cuda" and d.index is not None and d.index >= torch.cuda.device_count():
        return None, f"device: {device!r} does not exist; this machine has {torch.cuda.device_count()} CUDA device(s)"
    return d, None


class Trainer:
    """Train ``model`` by ``plan``. Per optimizer step: forward and backward of ``grad_accum``
    micro-batches -> (fp16: unscale) -> clip and measure the gradient norm -> read loss and norm to
    the host once (averaged over ranks) -> skip a non-finite step, or schedule the LR and step ->
    zero_grad. Every argument, the plan and the metrics early stopping and ``best_metric`` need are
    checked before the first step, all problems reported at once (:class:`~partwise.ConfigError`).

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
            A metric is ``train_loss`` or one the task's ``evaluate`` returns (``"wer"`` or ``"dev_wer"``; the older ``"val_wer"`` spelling is accepted).
            Under DDP rank 0 evaluates and every rank takes its metrics, so all decide alike.
        save_every: also checkpoint every N optimizer steps (always at each epoch end).
        callbacks: objects with any of ``on_step_end(trainer, logs)`` (``logs["grad_norm"]`` is the real
            norm, ``None`` when there were no gradients), ``on_epoch_end(trainer, metrics)``,
            ``on_phase_start(trainer, span)``, ``on_plan_change(trainer, changes)``.
        guard: wrap training in a :class:`~partwise.FrozenGuard` re-armed at each phase.
        cache: frozen-encoder output cache (see :class:`~partwise.EncoderCache`): ``"auto"`` uses it whenever the
            task supports it and the encoder is frozen, in eval mode and deterministic; ``"on"`` makes
            that a requirement (a :class:`~partwise.ConfigError` says why not); ``"off"`` never caches.
    """

    def __init__(
        self, model: nn.Module, parts: Parts, plan: Plan, task: Task | Callable[..., torch.Tensor], *,
        run_dir: str | Path | None = None, batch_size: int = 32, collate_fn: Callable[..., Any] | None = None,
        seed: int = 0, device: str | torch.device = "auto", precision: str = "fp32",
        grad_clip: float | Mapping[str, float] | None = None, grad_accum: int = 1, on_nonfinite: str = "skip",
        early_stopping: EarlyStopping | None = None, best_metric: tuple[str, str] | None = None,
        save_every: int | None = None, callbacks: Sequence[Any] = (), guard: bool = False, cache: str = "auto",
    ):
        self.model, self.parts, self.plan = model, parts, plan
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.batch_size, self.collate_fn, self.seed = batch_size, collate_fn, seed
        self.precision, self.grad_clip, self.grad_accum, self.on_nonfinite = precision, grad_clip, grad_accum, on_nonfinite
        self.early_stopping, self.best_metric, self.save_every = early_stopping, best_metric, save_every
        self.use_guard, self.cache_mode = guard, cache
        device_, device_problem = _device(device)
        errors = self._option_problems() + ([device_problem] if device_problem else [])
        if device_ is not None and precision == "fp16" and device_.type != "cuda":
            errors.append(f"precision: 'fp16' needs CUDA, but device is {str(device_)!r}; use 'bf16' on CPU")
        try:
            plan.check(parts)
        except ConfigError as e:
            errors += e.errors
        if errors:
            raise ConfigError(errors)
        self.task, self.device, self.callbacks = as_task(task), device_, list(callbacks)
        self.cache: EncoderCache | None = None
        self._guard: Any = None
        self._train_loader: Any = None
        self.scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
        self.rank, self.world = dist.rank_and_world()
        self.step, self.epoch, self.span, self.optimizer = 0, 0, None, None
        self.history: list[dict[str, Any]] = []
        self.best: float | None = None  # best value of best_metric
        self.skipped_steps, self._stale_evals, self._stop_best = 0, 0, None  # _stop_best: early stopping's best
        self.plan_changes: list[str] = []  # accepted on resume with allow_plan_change=True
        self._epoch_loss = (0.0, 0)  # sum and count of this epoch's step losses
        self._saved_at, self._steps_per_epoch = -1, 0
        self._best_name: str | None = None  # the checkpoint the "best" pointer names
        self.model.to(self.device)

    def _option_problems(self) -> list[str]:
        """Every argument of ``__init__`` that has a wrong type or value, one message each."""
        out = []
        if self.precision not in ("fp32", "bf16", "fp16"):
            out.append(f"precision: {self.precision!r} must be 'fp32', 'bf16' or 'fp16'")
        if self.on_nonfinite not in ("skip", "stop"):
            out.append(f"on_nonfinite: {self.on_nonfinite!r} must be 'skip' or 'stop'")
        for name in ("batch_size", "grad_accum"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 1:
                out.append(f"{name}: {getattr(self, name)!r} must be a whole number >= 1")
        if self.save_every is not None and (not _is_int(self.save_every) or self.save_every < 1):
            out.append(f"save_every: {self.save_every!r} must be a whole number >= 1, or None")
        if not _is_int(self.seed):
            out.append(f"seed: {self.seed!r} must be a whole number")
        if self.cache_mode not in ("auto", "on", "off"):
            out.append(f"cache: {self.cache_mode!r} must be 'auto', 'on' or 'off'")
        if not isinstance(self.use_guard, bool):
            out.append(f"guard: {self.use_guard!r} must be True or False")
        if self.early_stopping is not None and not isinstance(self.early_stopping, EarlyStopping):
            out.append(f"early_stopping: {self.early_stopping!r} must be an EarlyStopping(metric, mode, patience)")
        bm = self.best_metric
        if bm is not None and not (isinstance(bm, tuple | list) and len(bm) == 2 and isinstance(bm[0], str)
                                   and bm[1] in ("min", "max")):
            out.append(f"best_metric: {bm!r} must be (metric name, 'min' or 'max'), e.g. ('loss', 'min')")
        return out + self._clip_problems() + self._part_name_problems()

    def _clip_problems(self) -> list[str]:
        clip = self.grad_clip
        if clip is None:
            return []
        if not isinstance(clip, Mapping):
            return [] if _is_positive(clip) else [f"grad_clip: {clip!r} must be a number > 0 or a part -> max norm "
                                                  "mapping (None turns clipping off)"]
        out = [f"grad_clip: unknown part {p!r}; parts are {self.parts.names}" for p in clip if p not in self.parts]
        out += [f"grad_clip.{p}: {v!r} must be a number > 0" for p, v in clip.items() if not _is_positive(v)]
        return out

    def _part_name_problems(self) -> list[str]:
        if self.run_dir is None:
            return []
        return [f"parts: {m}" for m in ckpt.part_file_problems([*self.parts.names, ckpt.REST])]

    def _metric_problems(self, has_dev: bool) -> list[str]:
        """Metrics early stopping and ``best_metric`` need, against what the task declares it returns."""
        declared = declared_metrics(self.task)
        known = {"train_loss"} | ({f"dev_{m}" for m in declared or ()} if has_dev else set())
        rules = [("best_metric", self.best_metric[0])] if self.best_metric else []
        rules += [("early_stopping.metric", self.early_stopping.metric)] if self.early_stopping else []
        out = []
        for where, name in rules:
            if name in known or f"dev_{name}" in known or _dev_key(name) in known or (has_dev and declared is None):
                continue  # a task that declares no metrics is checked at its first evaluation
            why = "no dev_data given" if not has_dev else f"task {type(self.task).__name__} returns {sorted(declared or ())}"
            out.append(f"{where}: metric {name!r} will not be produced ({why}); choose one of {sorted(known)}")
        return out

    # -- phases ------------------------------------------------------------------------------
    def _enter_phase(self, span: PhaseSpan) -> None:
        """Freeze what the phase does not train and unfreeze what it does (the optimizer follows, see
        :func:`~partwise.build_optimizer`), set each part's optimizer options for the phase, give newly trainable
        parts their own warmup, and rebuild the DDP wrapper."""
        if self.use_guard and self._guard is not None:
            self._guard.check()  # the phase that ends left its frozen parts bit-identical
        ph = span.phase
        was_training = set(self.plan.phases[span.index - 1].train) if span.index > 0 else set()
        self._set_frozen(ph)
        self.optimizer = self._phase_optimizer(ph)
        for g in self.optimizer.param_groups:
            g.update(base_lr=g["lr"], start_step=span.start, warm=g.get("part") not in was_training)
        self.span = span
        enter_phase(self.task, ph.task_options, span.start)  # e.g. a schedule counted from the phase restarts
        self.cache = self._setup_cache()
        self.wrapped = self._cached_loss if self.cache is not None else dist.wrap(self.model, self.task, self.world)
        if self.use_guard:
            self._guard = self.parts.guard()
            self._guard.snapshot()
        for cb in self.callbacks:
            getattr(cb, "on_phase_start", lambda *a: None)(self, span)
        _failpoints.reached("phase.entered")

    def _set_frozen(self, ph: Phase) -> None:
        """Exactly the parts the phase does not train are frozen, with the phase's modes; parts whose
        state is already right are not touched."""
        thaw = [n for n in self.parts.names if n in ph.train and self.parts.is_frozen(n)]
        cold = [n for n in self.parts.names
                if n not in ph.train and self.parts.freeze_modes(n) != (ph.norm, ph.dropout)]
        if thaw:
            self.parts.unfreeze(*thaw)
        if cold:
            self.parts.freeze(*cold, norm=ph.norm, dropout=ph.dropout)

    def _phase_optimizer(self, ph: Phase) -> torch.optim.Optimizer | OptimizerSet:
        """The run's optimizer with the phase's options set in place; a new one only when the phase
        changes the optimizer class or layout — state is then carried where the class stays the same."""
        opts, default = ph.train_options(), ph.default_options()
        old = self.optimizer
        if old is not None and isinstance(old, OptimizerSet) == ph.separate and reconfigure(
                old, self.parts, opts, default):
            return old
        new = build_optimizer(self.parts, per_part=opts, default=default, separate=ph.separate)
        if old is not None:
            carry_state(old, new)
            before = {g["part"]: type(o).__name__ for o in optimizers_of(old) for g in o.param_groups if "part" in g}
            after = {g["part"]: type(o).__name__ for o in optimizers_of(new) for g in o.param_groups if "part" in g}
            switched = [f"{p} ({before[p]} -> {after[p]})" for p in ph.train if before.get(p, after.get(p)) != after.get(p)]
            if switched:
                warnings.warn(f"phase {ph.name!r} changes the optimizer of {', '.join(switched)}: their optimizer "
                              "state starts fresh", RuntimeWarning, stacklevel=3)
        return new

    def _setup_cache(self) -> EncoderCache | None:
        """The encoder-output cache for this phase: kept from the previous phase while the encoder
        stays frozen, built when it has just been frozen, dropped when it trains. Under DDP every rank
        encodes its share of the rows and the shares are gathered (see :class:`~partwise.EncoderCache`)."""
        if self.cache_mode == "off" or self._train_loader is None:
            return None
        self.parts.train()  # the modes training will run in
        if supports_cache(self.task) and any(p.requires_grad for p in self.task.encoder_of(self.model).parameters()):
            return None  # the encoder trains in this phase: nothing to cache (a later freeze rebuilds)
        blockers = cache_blockers(self.task, self.model, self.world)
        if blockers:
            if self.cache_mode == "on":
                raise ConfigError([f"cache: 'on', but the encoder's outputs cannot be cached: {'; '.join(blockers)}"])
            return None
        cache, loader = self.cache, self._train_loader
        if cache is None:
            refused: CacheRefused | None = None
            try:
                cache = EncoderCache.build(self.task, self.model, loader.dataset, loader.collate_fn, self.device,
                                           spill_dir=self.run_dir / "cache" if self.run_dir else None,
                                           rank=self.rank, world=self.world)
            except CacheRefused as e:
                refused = e
            if not dist.all_true(refused is None, self.world, self.device):  # every rank decides alike
                return self._refuse_cache(refused or CacheRefused("another rank refused the cache"))
        self._cache_loss = dist.wrap(self.model, self.task, self.world, encodings=cache)
        return cache

    def _refuse_cache(self, reason: CacheRefused) -> None:
        if self.cache_mode == "on":
            raise ConfigError([f"cache: 'on', but {reason}"]) from None
        warnings.warn(f"frozen-encoder cache not used: {reason}", RuntimeWarning, stacklevel=3)
        return None

    def _cached_loss(self, batch: Any, ctx: StepContext) -> torch.Tensor:
        """The loss from cached encoder outputs; on the first batch, cached and live outputs are
        compared first (all ranks must agree, or training goes on without the cache)."""
        cache = self.cache
        if cache is not None and not cache.verified:
            refused: CacheRefused | None = None
            try:
                cache.verify(self.model, batch, self.device)
            except CacheRefused as e:
                refused = e
            if not dist.all_true(refused is None, self.world, self.device):
                self.cache = self._refuse_cache(refused or CacheRefused("cached and live encoder outputs differ "
                                                                        "on another rank"))
                self.wrapped = dist.wrap(self.model, self.task, self.world)
                return self.wrapped(batch, ctx)
        return self._cache_loss(batch, ctx)

    # -- the loop ----------------------------------------------------------------------------
    def fit(self, train_data: Any, dev_data: Any = None, resume: str | Path | None = None,
            max_steps: int | None = None, max_minutes: float | None = None,
            allow_plan_change: bool = False) -> list[dict[str, Any]]:
        """Train until the plan ends, early stopping fires, or ``max_steps`` optimizer steps or
        ``max_minutes`` of wall time are done (a checkpoint is then written, as if the run were
        interrupted, and ``resume`` continues it). Returns the epoch history.

        ``train_data``: a map-style dataset (a list included) or a DataLoader, whose settings are
        kept. ``resume``: a run directory or checkpoint; it must have been trained under this plan,
        unless ``allow_plan_change`` (e.g. to extend the last phase), which is then recorded.
        """
        self._check_fit(dev_data, max_steps, max_minutes)
        torch.manual_seed(self.seed)
        loader = make_loader(train_data, self.batch_size, self.seed, self.collate_fn, self.rank, self.world)
        self._train_loader = loader
        steps_per_epoch = self._steps_per_epoch = len(loader) // self.grad_accum
        if steps_per_epoch < 1:
            raise ConfigError([f"train_data: {len(loader)} batch(es) per epoch make no optimizer step with "
                               f"grad_accum={self.grad_accum}; give more data or a smaller batch size"])
        total = self.plan.total_steps(steps_per_epoch)
        if self.run_dir is not None and self.rank == 0:
            ckpt.remove_debris(self.run_dir / "checkpoints")  # what a killed save left
        if resume is not None:
            self._restore(resume, steps_per_epoch, allow_plan_change)
        stop_at = total if max_steps is None else min(total, max_steps)
        deadline = None if max_minutes is None else time.perf_counter() + 60.0 * max_minutes
        micro, loss_sum, t0, timed_out = 0, None, time.perf_counter(), False
        while self.step < stop_at:
            self.epoch = self.step // steps_per_epoch
            start_epoch(loader, self.epoch, skip=(self.step - self.epoch * steps_per_epoch) * self.grad_accum)
            self.parts.train()  # model.train(); frozen parts' norm/dropout stay pinned to eval
            for batch in loader:
                span = self.plan.span_at(self.step, steps_per_epoch)
                if self.span is None or span.index != self.span.index:
                    self._enter_phase(span)
                    self.parts.train()
                loss_sum = self._forward_backward(batch, span, loss_sum)
                micro += 1
                if micro < self.grad_accum:
                    continue
                loss_value, norm = self._step(span, loss_sum)
                micro, loss_sum, self.step = 0, None, self.step + 1
                _failpoints.reached("step.done")
                self._end_step(loss_value, norm, ends_epoch=self.step % steps_per_epoch == 0 or self.step >= total)
                if deadline is not None and time.perf_counter() > deadline:
                    stop_at, timed_out = self.step, True
                if self.step >= stop_at or self.step % steps_per_epoch == 0:
                    break
            if self.step % steps_per_epoch == 0 or self.step >= total:
                if self._end_epoch(dev_data, time.perf_counter() - t0):
                    break
                t0 = time.perf_counter()
        if timed_out and self.step % steps_per_epoch and self.step < total:
            self._end_epoch(dev_data, time.perf_counter() - t0)  # out of time: evaluate the partial epoch
        if self.step == stop_at < total and self._saved_at != self.step:
            self.save()  # interrupted by max_steps / max_minutes: resumable from here
        if self.use_guard and self._guard is not None:
            self._guard.check()
        return self.history

    def _check_fit(self, dev_data: Any, max_steps: Any, max_minutes: Any) -> None:
        """What ``fit`` is given, checked before anything runs; all problems at once."""
        errors = self._metric_problems(dev_data is not None)
        if max_steps is not None and (not _is_int(max_steps) or max_steps < 0):
            errors.append(f"max_steps: {max_steps!r} must be a whole number >= 0, or None")
        if max_minutes is not None and not _is_positive(max_minutes):
            errors.append(f"max_minutes: {max_minutes!r} must be a number > 0, or None")
        if errors:
            raise ConfigError(errors)

    def _end_step(self, loss_value: float, norm: float | None, ends_epoch: bool) -> None:
        """Log the step (callbacks), then checkpoint every ``save_every`` steps — except on an epoch's
        last step, whose checkpoint the epoch end writes after its evaluation: a checkpoint taken
        before it would resume past an epoch end that never happened."""
        logs = {"step": self.step, "loss": loss_value, "grad_norm": norm, **self.lrs()}
        for cb in self.callbacks:
            getattr(cb, "on_step_end", lambda *a: None)(self, logs)
        _failpoints.reached("step.logged")
        if self.save_every and self.step % self.save_every == 0 and not ends_epoch:
            self.save()

    def _end_epoch(self, dev_data: Any, seconds: float) -> bool:
        """Evaluate (rank 0; its metrics go to every rank), keep the best checkpoint, and say whether
        early stopping fires (the same answer on every rank). In this order: evaluate, add the metrics
        to the history, decide best and early stopping, checkpoint, then tell the callbacks — so the
        checkpoint holds the whole epoch end (its history is what ``metrics.csv`` is rebuilt from on
        resume), and a kill before it replays the epoch end from the previous checkpoint."""
        total, n = self._epoch_loss
        self._epoch_loss = (0.0, 0)
        metrics: dict[str, Any] = {"epoch": self.epoch + 1, "step": self.step, "phase": self.span.phase.name,
                                   "train_loss": total / max(n, 1), "seconds": seconds, **self.lrs()}
        if dev_data is not None:
            scores = self._evaluate(dev_data) if self.rank == 0 else None
            metrics.update({f"dev_{k}": v for k, v in dist.broadcast_object(scores, self.world).items()})
        _failpoints.reached("epoch.evaluated")
        self.history.append(metrics)
        improved, stop = self._decide(metrics)
        self.save(best=improved)
        _failpoints.reached("epoch.saved")
        for cb in self.callbacks:
            getattr(cb, "on_epoch_end", lambda *a: None)(self, metrics)
        _failpoints.reached("epoch.logged")
        return stop

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
        key = name if name in metrics else f"dev_{name}" if f"dev_{name}" in metrics else _dev_key(name)
        if key not in metrics:
            raise ConfigError([f"best/early-stopping metric {name!r} not produced by {type(self.task).__name__}; "
                               f"have {sorted(metrics)}; choose one of those, or declare the task's metrics"])
        return float(metrics[key])

    # -- pieces of a step --------------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def _forward_backward(self, batch: Any, span: PhaseSpan, loss_sum: torch.Tensor | None) -> torch.Tensor:
        """Forward and backward of one micro-batch. Returns the running sum of the micro-batch losses,
        detached and left on the device (the loss is read to the host once per optimizer step)."""
        batch = move_to(batch, self.device)
        ctx = StepContext(self.step, self.epoch, span.phase.name, span.phase.task_options)
        with self._autocast():
            loss = self.wrapped(batch, ctx)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            got = f"a tensor of shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else type(loss).__name__
            raise ConfigError([f"task.loss: returned {got}; it must return a scalar tensor (e.g. loss.mean())"])
        scaled = loss / self.grad_accum
        (self.scaler.scale(scaled) if self.scaler else scaled).backward()
        detached = loss.detach().float().reshape(())
        return detached if loss_sum is None else loss_sum + detached

    def _step(self, span: PhaseSpan, loss_sum: torch.Tensor) -> tuple[float, float | None]:
        """Apply the accumulated gradients unless the loss or their norm is NaN/inf; then zero them.
        Returns the step's loss (mean over micro-batches and ranks) and the gradient norm."""
        if self.scaler is not None:
            for opt in self._optimizers():
                self.scaler.unscale_(opt)  # once per step; scaler.step() knows and does not unscale again
        norm = self._grad_norm()
        loss_value, norm_value = dist.loss_and_norm(loss_sum / self.grad_accum, norm, self.world)
        finite_grads = norm_value is None or math.isfinite(norm_value)
        if not math.isfinite(loss_value):
            self._nonfinite(f"loss is {loss_value}")
        elif self.scaler is not None:
            self._scaled_step(span, finite_grads, loss_value)
        elif not finite_grads:
            self._nonfinite(f"gradient norm is {norm_value}")
        else:
            span.phase.schedule.apply(self.optimizer.param_groups, self.step, span.end)
            self.optimizer.step()
            self._epoch_loss = (self._epoch_loss[0] + loss_value, self._epoch_loss[1] + 1)
        if self.scaler is not None:
            self.scaler.update()  # after every unscale_(): lowers the scale after an overflow
        self.optimizer.zero_grad(set_to_none=True)
        return loss_value, norm_value

    def _scaled_step(self, span: PhaseSpan, finite_grads: bool, loss_value: float) -> None:
        """fp16: ``scaler.step`` applies finite gradients and skips an overflow (which is no error:
        the scale is too high, and ``update`` lowers it)."""
        if finite_grads:
            span.phase.schedule.apply(self.optimizer.param_groups, self.step, span.end)
            self._epoch_loss = (self._epoch_loss[0] + loss_value, self._epoch_loss[1] + 1)
        else:
            self.skipped_steps += 1
        for opt in self._optimizers():
            self.scaler.step(opt)

    def _grad_norm(self) -> torch.Tensor | None:
        """The global norm of the trained parameters' gradients (on the device), clipping on the way
        when ``grad_clip`` is set; ``None`` when no parameter has a gradient."""
        by_part: dict[str, list[torch.Tensor]] = {}
        for g in self.optimizer.param_groups:
            by_part.setdefault(g["part"], []).extend(p for p in g["params"] if p.grad is not None)
        by_part = {k: v for k, v in by_part.items() if v}
        if not by_part:
            return None
        if isinstance(self.grad_clip, Mapping):
            norms = []
            for part, params in by_part.items():
                norm = nn.utils.get_total_norm([p.grad for p in params])
                if part in self.grad_clip:
                    nn.utils.clip_grads_with_norm_(params, self.grad_clip[part], norm)
                norms.append(norm)
            return torch.linalg.vector_norm(torch.stack(norms))
        params = [p for ps in by_part.values() for p in ps]
        if self.grad_clip:
            return nn.utils.clip_grad_norm_(params, self.grad_clip)
        return nn.utils.get_total_norm([p.grad for p in params])

    def _optimizers(self) -> list[torch.optim.Optimizer]:
        return list(self.optimizer) if isinstance(self.optimizer, OptimizerSet) else [self.optimizer]

    def _nonfinite(self, what: str) -> None:
        """A NaN/inf loss or gradient: drop the gradients; stop, or count the step as skipped (the
        batch is consumed and the step counter moves on, so the data order stays that of the plan)."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.on_nonfinite == "stop":
            raise NonFiniteLoss(f"{what} at step {self.step} (phase {self.span.phase.name!r}); nothing after the "
                                "last good checkpoint was saved. Lower the learning rate or clip gradients.")
        self.skipped_steps += 1
        warnings.warn(f"skipped step {self.step}: {what}", RuntimeWarning, stacklevel=3)

    def lrs(self) -> dict[str, float]:
        """Current learning rate per part (``lr/<part>``)."""
        groups = self.optimizer.param_groups if self.optimizer else []
        return {f"lr/{g['part']}": g["lr"] for g in groups if g["params"] and "part" in g}

    # -- checkpoints -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {"step": self.step, "epoch": self.epoch, "phase": self.span.index if self.span else -1,
                "optimizer": self.optimizer.state_dict() if self.optimizer else {}, "parts": self.parts.state_dict(),
                "rng": rng, "history": self.history, "best": self.best, "stale_evals": self._stale_evals,
                "stop_best": self._stop_best, "skipped_steps": self.skipped_steps,
                "scaler": self.scaler.state_dict() if self.scaler else {}, "epoch_loss": list(self._epoch_loss),
                "plan": plan_fingerprint(self.plan, self._steps_per_epoch), "plan_changes": list(self.plan_changes),
                "best_checkpoint": self._best_name, "callbacks": self._callback_states()}

    def _callback_states(self) -> dict[str, Any]:
        """The state of every callback that has ``state_dict()``, by class name (saved with checkpoints)."""
        return {type(cb).__name__: cb.state_dict() for cb in self.callbacks if callable(getattr(cb, "state_dict", None))}

    def save(self, best: bool = False) -> Path | None:
        """Write a checkpoint (rank 0 only) atomically; returns its directory. Its state records the
        checkpoint ``best`` should name (``"."``: this one), which a resume restores."""
        if self.run_dir is None or self.rank != 0:
            return None
        self._saved_at = self.step
        meta = {"step": self.step, "epoch": self.epoch, "phase": self.span.phase.name if self.span else None,
                "model": type(self.model).__qualname__, "history": self.history[-1:] if self.history else []}
        state = self.state_dict()
        if best:
            state["best_checkpoint"] = SELF
        path = ckpt.save_checkpoint(self.run_dir / "checkpoints", f"step-{self.step:08d}", self.model, self.parts,
                                    state, meta, pointers=("latest", "best") if best else ("latest",))
        if best:
            self._best_name = path.name
        return path

    def _restore_best_pointer(self, source: Path, recorded: Any) -> None:
        """After a kill between a checkpoint's ``latest`` and ``best`` pointers, point ``best`` where the
        resumed checkpoint says it should (when that checkpoint is in this run and still exists)."""
        if not isinstance(recorded, str) or self.run_dir is None or self.rank != 0:
            return
        root = self.run_dir / "checkpoints"
        name = source.name if recorded == SELF else recorded
        if source.parent.resolve() != root.resolve() or not (root / name / ckpt.META).is_file():
            return
        self._best_name = name
        pointer = root / "best"
        if not pointer.is_file() or pointer.read_text(encoding="utf-8").strip() != name:
            ckpt.write_text_atomic(pointer, name)

    def _restore(self, source: str | Path, steps_per_epoch: int, allow_plan_change: bool) -> None:
        source = ckpt.resolve_checkpoint(source)
        state = ckpt.load_state(source)
        self._check_plan(state, steps_per_epoch, allow_plan_change)
        ckpt.load_weights(self.model, self.parts, source)  # complete or refused
        self.step, self.history, self.best = state["step"], state["history"], state["best"]
        self._saved_at = self.step  # this step's checkpoint exists: no second one at the same step
        self.epoch = self.step // steps_per_epoch
        self._stale_evals, self.skipped_steps = state["stale_evals"], state["skipped_steps"]
        self._stop_best = state.get("stop_best", state["best"])
        self._epoch_loss = (float(state["epoch_loss"][0]), int(state["epoch_loss"][1]))
        saved = state.get("callbacks", {})
        for cb in self.callbacks:  # before the phase is entered: a callback sees a resumed phase as its own
            if type(cb).__name__ in saved and callable(getattr(cb, "load_state_dict", None)):
                cb.load_state_dict(saved[type(cb).__name__])
        self._enter_phase(self.plan.span_at(self.step, steps_per_epoch))  # the freeze state comes from the plan
        load_state_by_name(self.optimizer, state["optimizer"])
        if self.scaler is not None and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["cpu"])
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        self._restore_best_pointer(source, state.get("best_checkpoint"))

    def _check_plan(self, state: dict[str, Any], steps_per_epoch: int, allow_plan_change: bool) -> None:
        """Refuse a resume under another plan than the checkpoint's, unless ``allow_plan_change``
        (then the change is warned about, kept in ``plan_changes`` and told to callbacks)."""
        step = state["step"]
        self.plan_changes = list(state.get("plan_changes", []))
        if "plan" in state:
            changes = plan_differences(state["plan"], plan_fingerprint(self.plan, steps_per_epoch))
        else:  # a checkpoint from before plan fingerprints: its phase index must fit the plan
            span = self.plan.span_at(step, steps_per_epoch)
            allowed = {span.index} | ({span.index - 1} if step == span.start else set())
            changes = [] if state["phase"] in allowed else [
                f"the checkpoint is in phase {state['phase']} at step {step}, the plan puts that step in phase {span.index}"]
        if not changes:
            return
        if not allow_plan_change:
            raise ConfigError([f"resume: {c}" for c in changes] + [
                "resume with the plan the run was started with, or pass allow_plan_change=True "
                "(partwise resume --allow-plan-change) to continue under this one"])
        recorded = [f"step {step}: {c}" for c in changes]
        self.plan_changes += recorded
        warnings.warn("resuming under a changed plan (allow_plan_change=True): " + "; ".join(changes),
                      RuntimeWarning, stacklevel=4)
        for cb in self.callbacks:
            getattr(cb, "on_plan_change", lambda *a: None)(self, recorded)
