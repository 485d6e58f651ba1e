"""Data plumbing for the trainer: resumable epoch order, rank slicing, moving batches to a device."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sized
from dataclasses import fields, is_dataclass, replace
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

__all__ = ["ShuffledBatches", "TrainerBatches", "make_loader", "move_to"]


class ShuffledBatches:
    """Batches of indices in an order fixed by ``(seed, epoch)``, without touching global RNG.

    >>> b = ShuffledBatches(10, batch_size=4, seed=0)
    >>> b.set_epoch(0); first = list(b); b.set_epoch(0)
    >>> list(b) == first and len(b) == 3
    True
    """

    def __init__(self, n: int, batch_size: int, seed: int = 0, shuffle: bool = True, drop_last: bool = False):
        if batch_size <= 0:
            raise ValueError(f"batch_size={batch_size} must be > 0")
        self.n, self.batch_size, self.seed, self.shuffle, self.drop_last = n, batch_size, seed, shuffle, drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        for i in range(len(self)):
            yield order[i * self.batch_size : (i + 1) * self.batch_size]


class TrainerBatches:
    """Wraps any batch sampler: skips the batches a resumed run already consumed, and gives each
    rank its slice of every global batch (so N ranks see the same global batch as one process)."""

    def __init__(self, inner: Iterable[list[int]], rank: int = 0, world: int = 1):
        self.inner, self.rank, self.world, self.skip = inner, rank, world, 0

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.inner, "set_epoch"):
            self.inner.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.inner)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[list[int]]:
        for i, batch in enumerate(self.inner):
            if i < self.skip:
                continue
            if self.world > 1:
                if len(batch) % self.world:
                    raise ValueError(
                        f"a global batch of {len(batch)} items does not split evenly over {self.world} ranks; "
                        "use a batch size divisible by the world size, or drop_last"
                    )
                per = len(batch) // self.world
                batch = list(batch)[self.rank * per : (self.rank + 1) * per]
            yield batch
        self.skip = 0


def make_loader(
    data: Any, batch_size: int, seed: int, collate_fn: Any = None, rank: int = 0, world: int = 1, shuffle: bool = True
) -> DataLoader:
    """A DataLoader over ``data`` (a map-style Dataset, or a DataLoader whose batch sampler is reused)
    with a :class:`TrainerBatches` batch sampler and its own generator (so creating an iterator never
    consumes the global RNG, which resume relies on)."""
    if isinstance(data, DataLoader):
        inner = data.batch_sampler
        dataset, collate = data.dataset, collate_fn or data.collate_fn
    elif isinstance(data, Dataset) and isinstance(data, Sized):
        inner = ShuffledBatches(len(data), batch_size, seed=seed, shuffle=shuffle)
        dataset, collate = data, collate_fn
    else:
        raise TypeError(f"training data must be a map-style Dataset or a DataLoader, got {type(data).__name__}")
    return DataLoader(dataset, batch_sampler=TrainerBatches(inner, rank, world), collate_fn=collate,
                      generator=torch.Generator().manual_seed(seed))


def move_to(batch: Any, device: torch.device) -> Any:
    """Move tensors in a batch (tensor, dataclass, tuple, list, dict, or anything with ``.to``)."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if is_dataclass(batch) and not isinstance(batch, type):
        return replace(batch, **{f.name: move_to(getattr(batch, f.name), device) for f in fields(batch) if f.init})
    if isinstance(batch, dict):
        return {k: move_to(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(move_to(v, device) for v in batch)
    if hasattr(batch, "to"):
        return batch.to(device)
    return batch
