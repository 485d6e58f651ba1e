"""Data plumbing for the trainer: resumable epoch order, rank slicing, moving batches to a device."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import fields, is_dataclass, replace
from typing import Any

import torch
from torch.utils.data import BatchSampler, DataLoader, IterableDataset, RandomSampler, Sampler

from .._errors import ConfigError

__all__ = ["ShuffledBatches", "TrainerBatches", "make_loader", "start_epoch", "move_to", "eval_batches",
           "uneven_split"]


class ShuffledBatches:
    """Batches of indices in an order fixed by ``(seed, epoch)``, without touching global RNG.

    Examples:
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
            g = torch.Generator().manual_seed(_epoch_seed(self.seed, self.epoch))
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        for i in range(len(self)):
            yield order[i * self.batch_size : (i + 1) * self.batch_size]


class TrainerBatches:
    """Wraps any batch sampler: skips the batches a resumed run already consumed, and gives each
    rank its slice of every global batch (so N ranks see the same global batch as one process).
    A ``generator`` it is given (the DataLoader's, for worker seeds) is reseeded by ``(seed, epoch)``."""

    def __init__(self, inner: Iterable[list[int]], rank: int = 0, world: int = 1,
                 generator: torch.Generator | None = None, seed: int = 0):
        self.inner, self.rank, self.world, self.skip = inner, rank, world, 0
        self.generator, self.seed = generator, seed  # the loader's own generator (worker seeds), if ours

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.inner, "set_epoch"):
            self.inner.set_epoch(epoch)
        if self.generator is not None:
            self.generator.manual_seed(_epoch_seed(self.seed, epoch))

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


# DataLoader settings a user's loader keeps when the trainer puts its own batch sampler in
_KEPT = ("num_workers", "pin_memory", "timeout", "worker_init_fn", "multiprocessing_context", "persistent_workers",
         "pin_memory_device", "in_order")


def _epoch_seed(seed: int, epoch: int) -> int:
    return seed * 1_000_003 + epoch


class _EpochShuffled(Sampler[int]):
    """A ``RandomSampler``'s permutation, fixed by ``(seed, epoch)`` instead of a fresh random draw,
    so a resumed run replays the epoch it stopped in."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(_epoch_seed(self.seed, self.epoch))
        return iter(torch.randperm(self.n, generator=g).tolist())


class _SeededBatches:
    """A ``BatchSampler`` over an :class:`_EpochShuffled` sampler (forwards ``set_epoch``)."""

    def __init__(self, batches: BatchSampler, sampler: _EpochShuffled):
        self.batches, self.sampler = batches, sampler

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)


def _resumable_batches(loader: DataLoader[Any], seed: int) -> Iterable[list[int]]:
    """The loader's batch sampler; a plain shuffling one (``shuffle=True``) gets an epoch-seeded
    permutation, which exact resume needs. Samplers with ``set_epoch`` are used as they are."""
    inner = loader.batch_sampler
    if type(inner) is BatchSampler and type(inner.sampler) is RandomSampler and not inner.sampler.replacement:
        sampler = _EpochShuffled(len(inner.sampler), seed)
        return _SeededBatches(BatchSampler(sampler, inner.batch_size, inner.drop_last), sampler)
    return inner  # type: ignore[return-value]


def _is_map_style(data: Any) -> bool:
    """What ``DataLoader`` accepts as a map-style dataset: indexable with a length (a list included)."""
    return (hasattr(data, "__getitem__") and hasattr(data, "__len__") and not isinstance(data, IterableDataset)
            and not isinstance(data, str | bytes | Mapping))


def _data_problem(data: Any) -> str | None:
    if isinstance(data, DataLoader):
        if isinstance(data.dataset, IterableDataset):
            return ("train_data: a DataLoader over an IterableDataset cannot be resumed exactly or split over "
                    "ranks; give a map-style dataset (with __getitem__ and __len__)")
        if data.batch_sampler is None:
            return "train_data: a DataLoader with batch_size=None yields single items; give it a batch_size"
        return None
    if not _is_map_style(data):
        return (f"train_data: {type(data).__name__} is neither a map-style dataset (__getitem__ and __len__, "
                "e.g. a list or TensorDataset) nor a DataLoader")
    return None


def make_loader(
    data: Any, batch_size: int, seed: int, collate_fn: Any = None, rank: int = 0, world: int = 1, shuffle: bool = True
) -> DataLoader[Any]:
    """A DataLoader over ``data`` with a :class:`TrainerBatches` batch sampler (resume skipping, rank
    slicing). ``data`` is any map-style dataset (a list included), shuffled by ``(seed, epoch)``, or
    a DataLoader, whose batch sampler and settings (workers, pinned memory, persistent workers,
    worker init, generator, prefetch, timeout, multiprocessing context) are kept.

    Without a generator of its own the loader gets a seeded one (reseeded each epoch by
    :func:`start_epoch`), so creating an iterator never consumes the global RNG, which resume
    relies on. Raises :class:`~partwise.ConfigError` for data it cannot train on.
    """
    problem = _data_problem(data)
    if problem:
        raise ConfigError([problem])
    settings: dict[str, Any] = {}
    if isinstance(data, DataLoader):
        inner = _resumable_batches(data, seed)
        dataset, collate = data.dataset, collate_fn or data.collate_fn
        settings = {k: getattr(data, k) for k in _KEPT if hasattr(data, k)}
        if data.num_workers > 0:
            settings["prefetch_factor"] = data.prefetch_factor
        generator = data.generator
    else:
        inner = ShuffledBatches(len(data), batch_size, seed=seed, shuffle=shuffle)
        dataset, collate, generator = data, collate_fn, None
    own = generator is None
    batches = TrainerBatches(inner, rank, world, generator=torch.Generator() if own else None, seed=seed)
    return DataLoader(dataset, batch_sampler=batches, collate_fn=collate,
                      generator=batches.generator if own else generator, **settings)


def uneven_split(loader: DataLoader[Any], world: int, epochs: int) -> str | None:
    """Why the global batches of ``epochs`` epochs of ``loader`` (from :func:`make_loader`) cannot be
    split evenly over ``world`` ranks, or ``None`` — known before the first step."""
    inner = loader.batch_sampler.inner  # type: ignore[union-attr]
    if isinstance(inner, ShuffledBatches):
        sizes = {(i, min(inner.batch_size, inner.n - i * inner.batch_size)) for i in range(len(inner))
                 if i in (0, len(inner) - 1)}
        found = [(0, i, size) for i, size in sorted(sizes) if size % world]
    else:
        found = []
        for epoch in range(epochs):
            if hasattr(inner, "set_epoch"):
                inner.set_epoch(epoch)
            found += [(epoch, i, len(b)) for i, b in enumerate(inner) if len(b) % world][:1]
            if found:
                break
    if not found:
        return None
    epoch, i, size = found[0]
    return (f"train_data: global batch {i} of epoch {epoch} holds {size} rows, which do not split evenly over "
            f"{world} ranks; use a batch size divisible by {world} and a number of rows that is too (or drop the "
            "last batch: DataLoader(..., drop_last=True))")


def start_epoch(loader: DataLoader[Any], epoch: int, skip: int) -> None:
    """Set up ``loader`` (from :func:`make_loader`) for ``epoch``, skipping its first ``skip`` batches."""
    batches: TrainerBatches = loader.batch_sampler  # type: ignore[assignment]
    batches.set_epoch(epoch)
    batches.skip = skip


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


def eval_batches(data: Any, batch_size: int, collate_fn: Any, device: torch.device) -> Iterator[Any]:
    """Batches of held-out ``data`` (a DataLoader, a map-style dataset or a list; in order) on ``device``."""
    if not isinstance(data, DataLoader) and _is_map_style(data):
        data = DataLoader(data, batch_size=batch_size, collate_fn=collate_fn, generator=torch.Generator())
    return (move_to(b, device) for b in data)
