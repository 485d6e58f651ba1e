"""What the trainer trains: a task computes a loss for a batch and metrics on held-out data."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

__all__ = ["StepContext", "Task", "LossTask", "as_task", "declared_metrics", "enter_phase"]


@dataclass(frozen=True)
class StepContext:
    """Where training stands when a loss is computed.

    Attributes:
        step: the optimizer step (0, 1, 2, ...).
        epoch: the epoch (from 0).
        phase: the name of the plan phase in force.
        task_options: the phase's ``task_options``, passed through unread (e.g. the seq2seq tasks'
            ``{"teacher_forcing": TeacherForcing(...)}``, see :mod:`partwise.seq2seq`).
    """

    step: int
    epoch: int
    phase: str
    task_options: Mapping[str, Any] = field(default_factory=dict)


@runtime_checkable
class Task(Protocol):
    """``loss(model, batch, ctx) -> scalar tensor``; ``evaluate(model, batches, dataset) -> {metric: value}``.

    ``evaluate`` runs in eval mode under the trainer; ``dataset`` is the held-out dataset the batches
    come from (for tasks that score against references stored with it), or ``None``.

    A task may declare ``metrics: tuple[str, ...]``, the names ``evaluate`` returns; the trainer then
    checks a ``best_metric`` or early-stopping metric before the first step instead of after the
    first evaluation. A task may define ``enter_phase(start: int)``: the trainer calls it at every
    phase start (and on resume) with the phase's first step, as it does for every task option that
    has such a method (see :func:`enter_phase`).
    """

    def loss(self, model: nn.Module, batch: Any, ctx: StepContext) -> Tensor: ...

    def evaluate(self, model: nn.Module, batches: Iterable[Any], dataset: Any = None) -> dict[str, float]: ...


class LossTask:
    """A task from a plain ``loss_fn(model, batch) -> loss``; its metric is the mean held-out loss.

    Examples:
        >>> task = LossTask(lambda model, batch: model(batch[0]).pow(2).mean())
        >>> task.evaluate(nn.Linear(2, 1), [(torch.zeros(3, 2),)])["loss"] >= 0
        True
    """

    metrics: tuple[str, ...] = ("loss",)

    def __init__(self, loss_fn: Callable[[nn.Module, Any], Tensor]):
        self.loss_fn = loss_fn

    def loss(self, model: nn.Module, batch: Any, ctx: StepContext) -> Tensor:
        return self.loss_fn(model, batch)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Iterable[Any], dataset: Any = None) -> dict[str, float]:
        total, n = 0.0, 0
        for batch in batches:
            total += float(self.loss_fn(model, batch))
            n += 1
        return {"loss": total / max(n, 1)}


def as_task(task_or_loss_fn: Task | Callable[[nn.Module, Any], Tensor]) -> Task:
    if isinstance(task_or_loss_fn, Task):
        return task_or_loss_fn
    if callable(task_or_loss_fn):
        return LossTask(task_or_loss_fn)
    raise TypeError("expected a Task (loss + evaluate) or a loss_fn(model, batch), "
                    f"got {type(task_or_loss_fn).__name__}")


def enter_phase(task: Any, task_options: Mapping[str, Any], start: int) -> None:
    """Tell ``task`` and the phase's task options that a phase begins at step ``start``: each of them
    that has an ``enter_phase(start)`` method gets it called once (a schedule that counts from the
    phase restarts there).

    Examples:
        >>> class Counting:
        ...     def enter_phase(self, start): print("phase starts at", start)
        >>> enter_phase(LossTask(lambda model, batch: batch), {"option": Counting()}, 20)
        phase starts at 20
    """
    seen = {id(o): o for o in (task, *task_options.values()) if o is not None}
    for obj in seen.values():
        hook = getattr(obj, "enter_phase", None)
        if callable(hook):
            hook(start)


def declared_metrics(task: Any) -> tuple[str, ...] | None:
    """The metric names ``task`` declares (its ``metrics`` attribute), or ``None`` if it declares none.

    Examples:
        >>> declared_metrics(LossTask(lambda model, batch: batch))
        ('loss',)
    """
    names = getattr(task, "metrics", None)
    if names is None:
        return None
    if isinstance(names, str) or not all(isinstance(n, str) for n in names):
        from .._errors import ConfigError

        raise ConfigError([f"task.metrics: {names!r} must be a tuple of metric names, e.g. ('loss', 'wer')"])
    return tuple(names)
