"""Callbacks: the hooks the trainer calls, and the one place that calls them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from .._optim._plan import PhaseSpan
    from ._trainer import Trainer

__all__ = ["Callback", "Hook", "notify", "callback_states", "load_callback_states"]

Hook = Literal["on_phase_start", "on_step_end", "on_epoch_end", "on_plan_change"]


class Callback(Protocol):
    """What :class:`~partwise.Trainer` calls on the objects in ``trainer.callbacks``, in list order.

    Every hook is optional: a callback defines the ones it needs and the trainer skips the rest, so
    any object (no base class) is a callback. This protocol documents the hooks' signatures; a
    callback that defines them all satisfies it.

    - ``on_phase_start(trainer, span)``: a phase was entered (at its first step, and on resume, after
      the freeze state, optimizer and cache are set up for it).
    - ``on_step_end(trainer, logs)``: after each optimizer step (applied or skipped), with ``logs``
      holding ``step``, ``loss``, ``grad_norm`` (the real norm, ``None`` without gradients) and
      ``lr/<part>``; before a ``save_every`` checkpoint.
    - ``on_epoch_end(trainer, metrics)``: after the epoch's evaluation and checkpoint.
    - ``on_plan_change(trainer, changes)``: a resume accepted a changed plan (``allow_plan_change``).
    - ``state_dict()`` / ``load_state_dict(state)``: saved with every checkpoint (by class name) and
      restored on resume before the resumed phase is entered.

    Examples:
        >>> class Losses:
        ...     def __init__(self): self.seen = []
        ...     def on_step_end(self, trainer, logs): self.seen.append(logs["loss"])
        >>> notify([Losses()], "on_epoch_end", None, {})  # a hook it lacks is skipped
    """

    def on_phase_start(self, trainer: Trainer, span: PhaseSpan) -> None: ...

    def on_step_end(self, trainer: Trainer, logs: Mapping[str, Any]) -> None: ...

    def on_epoch_end(self, trainer: Trainer, metrics: Mapping[str, Any]) -> None: ...

    def on_plan_change(self, trainer: Trainer, changes: Sequence[str]) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


def notify(callbacks: Iterable[object], hook: Hook, trainer: Any, payload: Any) -> None:
    """Call ``hook(trainer, payload)`` on every callback that defines it, in order: the one place
    the trainer's hooks are called."""
    for cb in callbacks:
        fn = getattr(cb, hook, None)
        if fn is not None:
            fn(trainer, payload)


def callback_states(callbacks: Iterable[object]) -> dict[str, Any]:
    """The state of every callback that has ``state_dict()``, by class name (saved with checkpoints)."""
    return {type(cb).__name__: cb.state_dict() for cb in callbacks  # type: ignore[attr-defined]
            if callable(getattr(cb, "state_dict", None))}


def load_callback_states(callbacks: Iterable[object], saved: Mapping[str, Any]) -> None:
    """Give each callback with ``load_state_dict()`` the state saved under its class name."""
    for cb in callbacks:
        if type(cb).__name__ in saved and callable(getattr(cb, "load_state_dict", None)):
            cb.load_state_dict(saved[type(cb).__name__])  # type: ignore[attr-defined]
