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
from ._cache import CacheRefused, EncoderCache, cache_blockers, supports_cache
from ._errors import ConfigError
from ._loader import make_loader, move_to
from ._optim import OptimizerSet, build_optimizer, carry_state, load_state_by_name, optimizers_of, reconfigure
from ._parts import Parts
from ._plan import Phase, PhaseSpan, Plan
from ._task import StepContext, Task, as_task

__all__ = ["Trainer", "NonFiniteLoss", "EarlyStopping"]


class NonFiniteLoss(FloatingPointError):
    """The loss or gradient norm became NaN or infinite (``on_nonfinite="stop"``)."""


class EarlyStopping:
    """Stop when ``metric`` has not improved for ``patience`` evaluations."""

    def __init__(self, metric: str = "loss", mode: str = "min", patience: int = 3):
        if mode not in ("min", "max"):
            raise ValueError(f"mode={mode!r} must be 'min' or 'max'")
        self.metric, self.mode, self.patience = metric, mode, patience


class Trainer:
    """Train ``model`` by ``plan``: zero_grad -> forward -> backward -> clip -> step -> schedule.

    Args:
        model, parts, plan: the model, its part registry and the plan to follow.
        task: a :class:`~partwise.Task` or a plain ``loss_fn(model, batch) -> loss``.
        run_dir: where checkpoints go (``None``: no checkpoints).
        batch_size, collate_fn: used when ``fit`` gets a Dataset rather than a DataLoader.
        seed: seeds torch and the data order.
        device: ``"auto"`` (CUDA if available, else CPU), or any torch device.
        precision: ``"fp32"``, ``"bf16"`` (CPU or CUDA autocast) or ``"fp16"`` (CUDA, with loss scaling).
        grad_clip: max global gradient norm, or part -> max norm (per-part clipping).
        grad_accum: micro-batches per optimizer step.
        on_nonfinite: ``"skip"`` the step or ``"stop"`` with :class:`NonFiniteLoss`.
        early_stopping / best_metric: stop on a plateau; keep the best checkpoint by ``(metric, mode)``.
        save_every: also checkpoint every N optimizer steps (always at each epoch end).
        callbacks: objects with any of ``on_step_end(trainer, logs)``, ``on_epoch_end(trainer, metrics)``,
            ``on_phase_start(trainer, span)``.
        guard: wrap training in a :class:`~partwise.FrozenGuard` re-armed at each phase.
        cache: frozen-encoder output cache (see :mod:`partwise._cache`): ``"auto"`` uses it whenever the
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
        errors = []
        if precision not in ("fp32", "bf16", "fp16"):
            errors.append(f"precision: {precision!r} must be 'fp32', 'bf16' or 'fp16'")
        if on_nonfinite not in ("skip", "stop"):
            errors.append(f"on_nonfinite: {on_nonfinite!r} must be 'skip' or 'stop'")
        if grad_accum < 1:
            errors.append(f"grad_accum: {grad_accum!r} must be >= 1")
        if cache not in ("auto", "on", "off"):
            errors.append(f"cache: {cache!r} must be 'auto', 'on' or 'off'")
        if errors:
            raise ConfigError(errors)
        plan.check(parts)
        self.model, self.parts, self.plan, self.task = model, parts, plan, as_task(task)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.batch_size, self.collate_fn, self.seed = batch_size, collate_fn, seed
        self.device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
        if precision == "fp16" and self.device.type != "cuda":
            raise ConfigError(["precision: 'fp16' needs CUDA; use 'bf16' on CPU"])
        self.precision, self.grad_clip, self.grad_accum, self.on_nonfinite = precision, grad_clip, grad_accum, on_nonfinite
        self.early_stopping, self.best_metric, self.save_every = early_stopping, best_metric, save_every
        self.callbacks, self.use_guard, self.cache_mode = list(callbacks), guard, cache
        self.cache: EncoderCache | None = None
        self._guard: Any = None
        self._train_loader: Any = None
        self.scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
        self.rank, self.world = dist.rank_and_world()
        self.step, self.epoch, self.span, self.optimizer = 0, 0, None, None
        self.history: list[dict[str, Any]] = []
        self.best: float | None = None
        self.skipped_steps, self._stale_evals = 0, 0
        self._epoch_loss = (0.0, 0)  # sum and count of this epoch's step losses
        self._saved_at = -1
        self.model.to(self.device)

    # -- phases ------------------------------------------------------------------------------
    def _enter_phase(self, span: PhaseSpan) -> None:
        """Freeze what the phase does not train and unfreeze what it does (the optimizer follows, see
        :mod:`partwise._optim`), set each part's optimizer options for the phase, give newly trainable
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
        self.cache = self._setup_cache()
        self.wrapped = self._cached_loss if self.cache is not None else dist.wrap(self.model, self.task, self.world)
        if self.use_guard:
            self._guard = self.parts.guard()
            self._guard.snapshot()
        for cb in self.callbacks:
            getattr(cb, "on_phase_start", lambda *a: None)(self, span)

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
        stays frozen, built when it has just been frozen, dropped when it trains."""
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
        if self.cache is not None:
            return self.cache
        loader = self._train_loader
        try:
            return EncoderCache.build(self.task, self.model, loader.dataset, loader.collate_fn, self.device,
                                      spill_dir=self.run_dir / "cache" if self.run_dir else None)
        except CacheRefused as e:
            return self._refuse_cache(e)

    def _refuse_cache(self, reason: CacheRefused) -> None:
        if self.cache_mode == "on":
            raise ConfigError([f"cache: 'on', but {reason}"]) from None
        warnings.warn(f"frozen-encoder cache not used: {reason}", RuntimeWarning, stacklevel=3)
        return None

    def _cached_loss(self, batch: Any, ctx: StepContext) -> torch.Tensor:
        cache = self.cache
        if cache is not None and not cache.verified:
            try:
                cache.verify(self.model, batch, self.device)
            except CacheRefused as e:
                self.cache = self._refuse_cache(e)
                self.wrapped = dist.wrap(self.model, self.task, self.world)
                return self.wrapped(batch, ctx)
        return self.task.loss_from_encoding(self.model, batch, cache.lookup(batch, self.device), ctx)

    # -- the loop ----------------------------------------------------------------------------
    def fit(self, train_data: Any, val_data: Any = None, resume: str | Path | None = None,
            max_steps: int | None = None, max_minutes: float | None = None) -> list[dict[str, Any]]:
        """Train until the plan ends, early stopping fires, or ``max_steps`` optimizer steps or
        ``max_minutes`` of wall time are done (a checkpoint is then written, as if the run were
        interrupted, and ``resume`` continues it). Returns the epoch history."""
        torch.manual_seed(self.seed)
        loader = make_loader(train_data, self.batch_size, self.seed, self.collate_fn, self.rank, self.world)
        self._train_loader = loader
        steps_per_epoch = len(loader) // self.grad_accum
        total = self.plan.total_steps(steps_per_epoch)
        if resume is not None:
            self._restore(resume, steps_per_epoch)
        stop_at = total if max_steps is None else min(total, max_steps)
        deadline = None if max_minutes is None else time.perf_counter() + 60.0 * max_minutes
        micro, bad, t0, timed_out = 0, None, time.perf_counter(), False
        while self.step < stop_at:
            self.epoch = self.step // steps_per_epoch
            loader.batch_sampler.set_epoch(self.epoch)
            loader.batch_sampler.skip = (self.step - self.epoch * steps_per_epoch) * self.grad_accum
            self.parts.train()  # model.train(); frozen parts' norm/dropout stay pinned to eval
            for batch in loader:
                span = self.plan.span_at(self.step, steps_per_epoch)
                if self.span is None or span.index != self.span.index:
                    self._enter_phase(span)
                    self.parts.train()
                batch = move_to(batch, self.device)
                ctx = StepContext(self.step, self.epoch, span.phase.name, span.phase.teacher_forcing)
                with self._autocast():
                    loss = self.wrapped(batch, ctx)
                loss_value = float(loss.detach())
                if dist.all_true(math.isfinite(loss_value), self.world, self.device):
                    scaled = loss / self.grad_accum
                    (self.scaler.scale(scaled) if self.scaler else scaled).backward()
                else:
                    bad = bad or f"loss is {loss_value}"
                micro += 1
                if micro < self.grad_accum:
                    continue
                norm = self._clip() if bad is None else math.nan
                if bad is None and not math.isfinite(norm):  # only measured when clipping is on
                    bad = f"gradient norm is {norm}"
                if bad is None:
                    span.phase.schedule.apply(self.optimizer.param_groups, self.step, span.end)
                    self._optimizer_step()
                    self._epoch_loss = (self._epoch_loss[0] + loss_value, self._epoch_loss[1] + 1)
                else:
                    self._nonfinite(bad)
                self.optimizer.zero_grad(set_to_none=True)
                micro, bad, self.step = 0, None, self.step + 1
                logs = {"step": self.step, "loss": loss_value, "grad_norm": norm, **self.lrs()}
                for cb in self.callbacks:
                    getattr(cb, "on_step_end", lambda *a: None)(self, logs)
                if self.save_every and self.step % self.save_every == 0:
                    self.save()
                if deadline is not None and time.perf_counter() > deadline:
                    stop_at, timed_out = self.step, True
                if self.step >= stop_at or self.step % steps_per_epoch == 0:
                    break
            if self.step % steps_per_epoch == 0 or self.step >= total:
                if self._end_epoch(val_data, time.perf_counter() - t0):
                    break
                t0 = time.perf_counter()
        if timed_out and self.step % steps_per_epoch and self.step < total:
            self._end_epoch(val_data, time.perf_counter() - t0)  # out of time: evaluate the partial epoch
        if self.step == stop_at < total and self._saved_at != self.step:
            self.save()  # interrupted by max_steps / max_minutes: resumable from here
        if self.use_guard and self._guard is not None:
            self._guard.check()
        return self.history

    def _end_epoch(self, val_data: Any, seconds: float) -> bool:
        total, n = self._epoch_loss
        self._epoch_loss = (0.0, 0)
        metrics: dict[str, Any] = {"epoch": self.epoch + 1, "step": self.step, "phase": self.span.phase.name,
                                   "train_loss": total / max(n, 1), "seconds": seconds, **self.lrs()}
        if val_data is not None and self.rank == 0:
            self.model.eval()
            dataset = val_data.dataset if isinstance(val_data, torch.utils.data.DataLoader) else val_data
            scores = self.task.evaluate(self.model, self._batches(val_data), dataset)
            metrics.update({f"val_{k}": v for k, v in scores.items()})
        self.history.append(metrics)
        improved = False
        if self.best_metric or self.early_stopping:
            name, mode = self.best_metric or (self.early_stopping.metric, self.early_stopping.mode)
            key = name if name in metrics else f"val_{name}"
            if key not in metrics:
                raise ConfigError([f"best/early-stopping metric {name!r} not produced; have {sorted(metrics)}"])
            value = metrics[key]
            improved = self.best is None or (value < self.best if mode == "min" else value > self.best)
            self.best = value if improved else self.best
            self._stale_evals = 0 if improved else self._stale_evals + 1
        self.save(best=improved and self.best_metric is not None)
        for cb in self.callbacks:
            getattr(cb, "on_epoch_end", lambda *a: None)(self, metrics)
        return self.early_stopping is not None and self._stale_evals >= self.early_stopping.patience

    # -- pieces of a step --------------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def _clip(self) -> float:
        if self.scaler is not None:
            for opt in self._optimizers():
                self.scaler.unscale_(opt)
        if isinstance(self.grad_clip, Mapping):
            norms = [torch.nn.utils.clip_grad_norm_(self.parts[p].parameters, c) for p, c in self.grad_clip.items()
                     if not self.parts.is_frozen(p)]
            return float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0
        if not self.grad_clip:
            return 0.0  # no clipping: skip the extra pass over the gradients (the loss is still checked)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        return float(torch.nn.utils.clip_grad_norm_(params, self.grad_clip))

    def _optimizers(self) -> list[torch.optim.Optimizer]:
        return list(self.optimizer) if isinstance(self.optimizer, OptimizerSet) else [self.optimizer]

    def _optimizer_step(self) -> None:
        if self.scaler is None:
            self.optimizer.step()
            return
        for opt in self._optimizers():
            self.scaler.step(opt)
        self.scaler.update()

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

    def _batches(self, data: Any) -> Any:
        if isinstance(data, torch.utils.data.Dataset):
            data = torch.utils.data.DataLoader(data, batch_size=self.batch_size, collate_fn=self.collate_fn)
        return (move_to(b, self.device) for b in data)

    # -- checkpoints -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {"step": self.step, "epoch": self.epoch, "phase": self.span.index if self.span else -1,
                "optimizer": self.optimizer.state_dict() if self.optimizer else {}, "parts": self.parts.state_dict(),
                "rng": rng, "history": self.history, "best": self.best, "stale_evals": self._stale_evals,
                "skipped_steps": self.skipped_steps, "scaler": self.scaler.state_dict() if self.scaler else {},
                "epoch_loss": list(self._epoch_loss)}

    def save(self, best: bool = False) -> Path | None:
        """Write a checkpoint (rank 0 only) atomically; returns its directory."""
        if self.run_dir is None or self.rank != 0:
            return None
        self._saved_at = self.step
        meta = {"step": self.step, "epoch": self.epoch, "phase": self.span.phase.name if self.span else None,
                "model": type(self.model).__qualname__, "history": self.history[-1:] if self.history else []}
        return ckpt.save_checkpoint(self.run_dir / "checkpoints", f"step-{self.step:08d}", self.model, self.parts,
                                    self.state_dict(), meta, pointers=("latest", "best") if best else ("latest",))

    def _restore(self, source: str | Path, steps_per_epoch: int) -> None:
        state = ckpt.load_state(source)
        ckpt.load_weights(self.model, self.parts, source)
        self.step, self.history, self.best = state["step"], state["history"], state["best"]
        self.epoch = self.step // steps_per_epoch
        self._stale_evals, self.skipped_steps = state["stale_evals"], state["skipped_steps"]
        self._epoch_loss = (float(state["epoch_loss"][0]), int(state["epoch_loss"][1]))
        span = self.plan.span_at(self.step, steps_per_epoch)
        # saved in the phase the plan gives, or right at its end (the transition had not run yet)
        allowed = {span.index} | ({span.index - 1} if self.step == span.start else set())
        if state["phase"] not in allowed:
            raise ConfigError([f"checkpoint is in phase {state['phase']} at step {self.step}, but the plan puts that "
                               f"step in phase {span.index}; resume with the plan the run was started with"])
        self._enter_phase(span)  # the freeze state comes from the plan, never from what happens to be set
        load_state_by_name(self.optimizer, state["optimizer"])
        if self.scaler is not None and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["cpu"])
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
