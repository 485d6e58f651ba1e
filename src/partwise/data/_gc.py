"""Pausing Python's cyclic garbage collector while bulk-building acyclic containers."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["paused_gc"]


@contextmanager
def paused_gc() -> Iterator[None]:
    """Disable the cyclic GC inside the block (restoring its previous state after).

    Building ~10^5 small lists triggers many generational collections that scan every object
    already alive; for data that has no reference cycles this more than halves loading time.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
