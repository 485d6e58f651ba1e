"""The task kinds the CLI runs, by the recipe's ``task.name`` (the protocol: :class:`partwise.recipe.TaskKind`)."""

from __future__ import annotations

from typing import Any

from .._errors import ConfigError

__all__ = ["KINDS", "get_kind"]

KINDS = ("seq2seq", "stress", "digits_cycle")


def get_kind(name: str) -> Any:
    """A new instance of the kind ``name``; each kind's module (and its dependencies) loads on first use."""
    if name == "seq2seq":
        from ._seq2seq_kind import Seq2SeqKind

        return Seq2SeqKind()
    if name == "stress":
        from ..tasks._stress import StressKind

        return StressKind()
    if name == "digits_cycle":
        from ..tasks._digits import DigitsCycleKind

        return DigitsCycleKind()
    raise ConfigError([f"task.name: {name!r} is not a task kind; choose one of {sorted(KINDS)}"])
