"""Seeded random subsets of a training split, for fair small-data runs (learning curves)."""

from __future__ import annotations

import math

import torch

__all__ = ["subset_indices"]


def subset_indices(total: int, size: int | None = None, fraction: float | None = None, seed: int = 0) -> list[int]:
    """Indices of a seeded random subset of ``total`` items, in their original order.

    Give exactly one of ``size`` (a number of items) or ``fraction`` (of ``total``, rounded up, at
    least one item). The subset is the first ``size`` items of one seeded permutation of all of
    them, so with one seed the subsets are nested: the 500-item subset lies inside the 2,000-item
    one, and a learning curve adds data without swapping any out. A ``size`` larger than ``total``
    is an error (``ValueError`` naming both).

    Examples:
        >>> subset_indices(10, size=3, seed=0)
        [1, 4, 7]
        >>> set(subset_indices(10, size=3, seed=0)) <= set(subset_indices(10, fraction=0.5, seed=0))
        True
    """
    if (size is None) == (fraction is None):
        raise ValueError("subset: give exactly one of size or fraction")
    if size is not None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"subset size={size!r} must be a whole number >= 1")
        if size > total:
            raise ValueError(f"subset size={size:,} is more than the {total:,} items of the training split; "
                             "give a smaller size, or leave subset out to train on all of them")
        count = size
    else:
        if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 < fraction <= 1:
            raise ValueError(f"subset fraction={fraction!r} must be a number in (0, 1]")
        count = max(1, math.ceil(fraction * total))
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"subset seed={seed!r} must be a whole number")
    order = torch.randperm(total, generator=torch.Generator().manual_seed(seed))
    return sorted(order[:count].tolist())
