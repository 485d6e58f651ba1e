"""The mechanics of a training step, and the cursor that walks a run's epochs.

:func:`forward_backward` is one micro-step; :func:`optimizer_update` is what follows the last
micro-batch of an optimizer step; :class:`EpochCursor` says which micro-batches make the next steps,
where an epoch ends and when the run stops. The trainer's loop is made of these.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

import torch
from torch import nn

from .._errors import ConfigError
from .._optim._optimizers import OptimizerSet, optimizers_of
from . import _distributed as dist
from ._loader import start_epoch

__all__ = ["autocast", "forward_backward", "optimizer_update", "grad_norm", "StepResult", "EpochCursor"]

Optimizer = torch.optim.Optimizer | OptimizerSet


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """The autocast context of ``precision`` (``"fp32"``: none)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def forward_backward(loss_fn: Callable[[], Any], device: torch.device, precision: str, grad_accum: int,
                     scaler: torch.amp.GradScaler | None) -> torch.Tensor:
    """One micro-step: the loss under autocast, then backward of ``loss / grad_accum`` (scaled by
    ``scaler`` under fp16). Returns the loss, detached, as a float32 scalar left on the device."""
    with autocast(device, precision):
        loss = loss_fn()
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        got = f"a tensor of shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise ConfigError([f"task.loss: returned {got}; it must return a scalar tensor (e.g. loss.mean())"])
    if not loss.requires_grad:
        raise ConfigError(["task.loss: the loss does not require grad, so no trainable part can learn from it: it "
                           "was computed under torch.no_grad() or torch.inference_mode(), or from .detach()ed "
                           "tensors. A frozen module inside the loss needs neither: partwise freezing keeps "
                           "gradients flowing through it (pw.grad_report shows which parts receive one)"])
    scaled = loss / grad_accum
    (scaler.scale(scaled) if scaler else scaled).backward()  # type: ignore[no-untyped-call]
    return loss.detach().float().reshape(())


class StepResult(NamedTuple):
    """What an optimizer update did: the step's loss (mean over micro-batches and ranks), the
    gradient norm (``None``: no gradients), and whether the optimizer stepped."""

    loss: float
    grad_norm: float | None
    applied: bool


def optimizer_update(optimizer: Optimizer, loss_sum: torch.Tensor, *, grad_accum: int,
                     grad_clip: float | Mapping[str, float] | None, scaler: torch.amp.GradScaler | None, world: int,
                     on_nonfinite: Callable[[str], None]) -> StepResult:
    """Apply the accumulated gradients (the learning rates are already set for the step), in this
    order: (fp16: unscale once) -> clip and measure the gradient norm -> read loss and norm to the
    host once (averaged over ranks) -> a NaN/inf loss, or gradient norm without fp16, drops the
    gradients and calls ``on_nonfinite(what)`` (which warns or raises); otherwise the optimizer steps
    (fp16: ``scaler.step``, which skips an overflow itself) -> (fp16: ``scaler.update``) -> zero_grad."""
    if scaler is not None:
        for opt in optimizers_of(optimizer):
            scaler.unscale_(opt)  # once per step; scaler.step() knows and does not unscale again
    norm = grad_norm(optimizer, grad_clip)
    loss_value, norm_value = dist.loss_and_norm(loss_sum / grad_accum, norm, world)
    finite_grads = norm_value is None or math.isfinite(norm_value)
    applied = False
    if not math.isfinite(loss_value) or (scaler is None and not finite_grads):
        optimizer.zero_grad(set_to_none=True)
        on_nonfinite(f"loss is {loss_value}" if not math.isfinite(loss_value) else f"gradient norm is {norm_value}")
    elif scaler is not None:  # scaler.step applies finite gradients and skips an overflow (update lowers the scale)
        applied = finite_grads
        for opt in optimizers_of(optimizer):
            scaler.step(opt)
    else:
        optimizer.step()
        applied = True
    if scaler is not None:
        scaler.update()  # after every unscale_(): lowers the scale after an overflow
    optimizer.zero_grad(set_to_none=True)
    return StepResult(loss_value, norm_value, applied)


def grad_norm(optimizer: Optimizer, grad_clip: float | Mapping[str, float] | None) -> torch.Tensor | None:
    """The global norm of the trained parameters' gradients (on the device), clipping on the way
    when ``grad_clip`` is set (a mapping: per part); ``None`` when no parameter has a gradient."""
    by_part: dict[str, list[torch.Tensor]] = {}
    for g in optimizer.param_groups:
        by_part.setdefault(g["part"], []).extend(p for p in g["params"] if p.grad is not None)
    by_part = {k: v for k, v in by_part.items() if v}
    if not by_part:
        return None
    if isinstance(grad_clip, Mapping):
        norms = []
        for part, params in by_part.items():
            norm = nn.utils.get_total_norm(_grads(params))
            if part in grad_clip:
                nn.utils.clip_grads_with_norm_(params, grad_clip[part], norm)
            norms.append(_whole(norm))
        return torch.linalg.vector_norm(torch.stack(norms))
    params = [p for ps in by_part.values() for p in ps]
    if grad_clip:
        return _whole(nn.utils.clip_grad_norm_(params, grad_clip))
    return _whole(nn.utils.get_total_norm(_grads(params)))


def _whole(norm: torch.Tensor) -> torch.Tensor:
    """A norm of sharded gradients (a ``DTensor``, FSDP2) as a plain tensor, the same on every rank."""
    from torch.distributed.tensor import DTensor

    return norm.full_tensor() if isinstance(norm, DTensor) else norm


def _grads(params: list[torch.Tensor]) -> list[torch.Tensor]:
    return [g for p in params if (g := p.grad) is not None]


class EpochCursor:
    """Where a run stands in its epochs and when it stops; the loop asks it and does no step
    arithmetic of its own.

    An epoch is ``steps_per_epoch`` optimizer steps of ``grad_accum`` micro-batches each; the plan's
    ``total`` steps end the last one (which may be short). The run stops at ``total``, after
    ``max_steps``, or at the first step end past ``max_minutes`` of wall time (``timed_out``).
    """

    def __init__(self, loader: Any, steps_per_epoch: int, grad_accum: int, total: int,
                 max_steps: int | None = None, max_minutes: float | None = None):
        self.loader, self.steps_per_epoch, self.grad_accum, self.total = loader, steps_per_epoch, grad_accum, total
        self.stop_at = total if max_steps is None else min(total, max_steps)
        self.deadline = None if max_minutes is None else time.perf_counter() + 60.0 * max_minutes
        self.timed_out = False
        self._t0 = time.perf_counter()

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch

    def steps(self, step: int) -> Iterator[Iterator[Any]]:
        """The rest of ``step``'s epoch, one iterator of micro-batches per optimizer step, read lazily
        from the loader: the epoch starts past the micro-batches a resumed run already consumed and
        ends at its last step, or earlier where the run stops at ``max_steps``."""
        epoch = self.epoch_of(step)
        start_epoch(self.loader, epoch, skip=(step - epoch * self.steps_per_epoch) * self.grad_accum)
        end = min((epoch + 1) * self.steps_per_epoch, self.stop_at)
        batches = iter(self.loader)
        for _ in range(end - step):
            yield itertools.islice(batches, self.grad_accum)

    def ends_epoch(self, step: int) -> bool:
        """Whether the step count ``step`` closes an epoch (the plan's last step closes the last one)."""
        return step % self.steps_per_epoch == 0 or step >= self.total

    def out_of_time(self) -> bool:
        """Whether ``max_minutes`` have passed (asked after each step; once true, it stays true)."""
        if self.deadline is not None and time.perf_counter() > self.deadline:
            self.timed_out = True
        return self.timed_out

    def finished(self, step: int) -> bool:
        return step >= self.stop_at or self.timed_out

    def interrupted(self, step: int) -> bool:
        """Whether the run stopped before the plan's end because of ``max_steps`` or ``max_minutes``."""
        return step < self.total and (self.timed_out or step >= self.stop_at)

    def epoch_seconds(self) -> float:
        """Wall time since the run (or the clock's last restart, at an epoch end) began."""
        return time.perf_counter() - self._t0

    def restart_clock(self) -> None:
        self._t0 = time.perf_counter()
