"""Suggestions for error messages: the names closest to one that was not found."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["closest"]


def closest(word: str, candidates: Iterable[str], n: int = 3) -> str:
    """The ``n`` candidates most like ``word`` (else the shortest ones), quoted, for a "did you mean".

    Examples:
        >>> closest("encodr", ["encoder", "decoder", "head"])
        "'encoder', 'decoder'"
    """
    names = [c for c in candidates if c]
    close = difflib.get_close_matches(word, names, n=n, cutoff=0.5) or sorted(names, key=len)[:n]
    return ", ".join(repr(c) for c in close)
