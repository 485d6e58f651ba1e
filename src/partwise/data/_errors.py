"""Errors raised while reading data files."""

from __future__ import annotations

from .._errors import PartwiseError

__all__ = ["DataFormatError"]


class DataFormatError(PartwiseError, ValueError):
    """A data file has lines that do not follow its expected format.

    The message lists every offending line number, shows the first few lines, names the file
    and states the expected format, so that one run reveals all problems at once.
    """
