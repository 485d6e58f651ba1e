"""Exceptions raised by partwise. Each message names the bad value, where it came from, and the fix.

Every error a user can cause derives from :class:`PartwiseError`, so a program (the ``partwise``
command line included) can tell them from bugs with one ``except PartwiseError``. Each also keeps
the builtin base it had before the family existed (``ValueError``, ``RuntimeError``, ...), so
existing ``except ValueError`` code keeps working.
"""

from __future__ import annotations

__all__ = ["PartwiseError", "PartError", "FrozenPartChanged", "ConfigError", "CheckpointError", "CheckpointNotFound",
           "CacheRefused"]


class PartwiseError(Exception):
    """Base class of every error a user of partwise can cause (bad input, not a bug in partwise)."""


class PartError(PartwiseError, ValueError):
    """A part specification, freeze request or optimizer layout that cannot be honoured.

    Raised before anything is changed: a failed call leaves the model and its optimizers as they were.
    """


class FrozenPartChanged(PartwiseError, RuntimeError):
    """A tensor of a frozen part changed bitwise inside a :class:`~partwise.FrozenGuard`."""

    def __init__(self, changed: list[str]):
        self.changed = list(changed)
        shown = ", ".join(self.changed[:10]) + (" ..." if len(self.changed) > 10 else "")
        super().__init__(
            f"{len(self.changed)} frozen tensor(s) changed: {shown}. Something wrote to a frozen part "
            "(an optimizer it was never removed from, an in-place op, a norm layer in train mode)."
        )


class ConfigError(PartwiseError, ValueError):
    """A configuration (recipe, override, argument set) that failed validation.

    ``errors`` holds every problem found, each as ``"path.in.config: message"``.
    """

    def __init__(self, errors: list[str], source: str | None = None):
        self.errors = list(errors)
        self.source = source
        where = f" in {source}" if source else ""
        body = "; ".join(self.errors)
        super().__init__(f"{len(self.errors)} problem(s){where}: {body}")


class CheckpointError(PartwiseError, ValueError):
    """A checkpoint that is damaged, or that does not fit the model or plan it is loaded into.

    ``problems`` lists every mismatch found (missing and unexpected tensors, shapes, dtypes).
    """

    def __init__(self, message: str, problems: list[str] | None = None):
        self.problems = list(problems or [])
        super().__init__(message)


class CheckpointNotFound(CheckpointError, FileNotFoundError):
    """No complete checkpoint where one was looked for (also a ``FileNotFoundError``)."""


class CacheRefused(PartwiseError, RuntimeError):
    """The encoder's outputs cannot be cached; the message says why."""
