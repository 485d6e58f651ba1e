"""Exceptions raised by partwise. Each message names the bad value, where it came from, and the fix."""

from __future__ import annotations

__all__ = ["PartError", "FrozenPartChanged", "ConfigError"]


class PartError(ValueError):
    """A part specification, freeze request or optimizer layout that cannot be honoured.

    Raised before anything is changed: a failed call leaves the model and its optimizers as they were.
    """


class FrozenPartChanged(RuntimeError):
    """A tensor of a frozen part changed bitwise inside a :class:`~partwise.FrozenGuard`."""

    def __init__(self, changed: list[str]):
        self.changed = list(changed)
        shown = ", ".join(self.changed[:10]) + (" ..." if len(self.changed) > 10 else "")
        super().__init__(
            f"{len(self.changed)} frozen tensor(s) changed: {shown}. Something wrote to a frozen part "
            "(an optimizer it was never removed from, an in-place op, a norm layer in train mode)."
        )


class ConfigError(ValueError):
    """A configuration (recipe, override, argument set) that failed validation.

    ``errors`` holds every problem found, each as ``"path.in.config: message"``.
    """

    def __init__(self, errors: list[str], source: str | None = None):
        self.errors = list(errors)
        self.source = source
        where = f" in {source}" if source else ""
        body = "; ".join(self.errors)
        super().__init__(f"{len(self.errors)} problem(s){where}: {body}")
