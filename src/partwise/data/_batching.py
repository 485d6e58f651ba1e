"""Length-bucketed, resumable batch sampling."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import Tensor
from torch.utils.data import Sampler

__all__ = ["BucketBatchSampler"]

_SEED_STRIDE = 1_000_003  # combines (seed, epoch) into one generator seed
_CONFIG_KEYS = ("num_rows", "batch_size", "seed", "bucket_size_multiplier", "shuffle", "drop_last")


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"BucketBatchSampler {name}={value!r} must be an int >= 1")
    return value


def _sort_key(lengths: Tensor) -> Tensor:
    """One int64 key per row of ``lengths`` (N, K) ordering rows by column 0, ties by column 1, ..."""
    key = torch.zeros(lengths.shape[0], dtype=torch.long)
    span = 1
    for column in lengths.unbind(1):
        radix = int(column.max()) + 1
        span *= radix
        if span >= 2**62:
            raise ValueError(
                "BucketBatchSampler lengths are too large to combine into one sort key"
            )
        key = key * radix + column
    return key


def _argsort(key: Tensor) -> Tensor:
    return torch.sort(key, stable=True).indices


class BucketBatchSampler(Sampler[list[int]]):
    """Batches of rows of similar length, so that little of each batch is padding.

    With ``shuffle`` (training): shuffle all rows, sort them by length within chunks of
    ``batch_size * bucket_size_multiplier`` rows, cut each chunk into batches, shuffle the
    batch order. The order depends only on ``(seed, epoch)`` through a ``torch.Generator``.
    Without ``shuffle`` (evaluation): sort all rows by length and cut, no randomness.

    Resuming: :meth:`state_dict` holds the epoch and how many batches of it were handed out;
    after :meth:`load_state_dict` the next iteration yields exactly the remaining batches.
    A finished iteration moves on to the next epoch. With a multi-process ``DataLoader`` the
    sampler runs ahead of the training loop; save the loop's own batch count instead.

    Args:
        lengths: length of each dataset row, shape ``(N,)``, or several lengths per row, shape
            ``(N, K)``, sorted by the first column then the next (``Seq2SeqDataset.lengths``
            gives source and target lengths).
        batch_size: rows per batch.
        shuffle: random order per epoch (training) or sorted order (evaluation).
        seed: base seed; the epoch is mixed in.
        bucket_size_multiplier: chunk size in batches; 1 gives plain random batches.
        drop_last: drop the one batch smaller than ``batch_size``, if any.

    Examples:
        >>> sampler = BucketBatchSampler([5, 1, 4, 2, 3, 6], batch_size=2, shuffle=False)
        >>> list(sampler)
        [[1, 3], [4, 2], [0, 5]]
    """

    def __init__(
        self,
        lengths: Sequence[int] | Sequence[Sequence[int]] | Tensor,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        bucket_size_multiplier: int = 100,
        drop_last: bool = False,
    ) -> None:
        keys = torch.as_tensor(lengths, dtype=torch.long)
        if keys.dim() not in (1, 2) or keys.shape[0] == 0 or keys.numel() == 0:
            raise ValueError(
                f"BucketBatchSampler lengths have shape {tuple(keys.shape)}; pass one length per "
                "dataset row, shape (N,), or several per row, shape (N, K), with N >= 1"
            )
        if bool((keys < 0).any()):
            raise ValueError("BucketBatchSampler got negative lengths; lengths must be >= 0")
        self._num_rows = keys.shape[0]
        self._key = _sort_key(keys.reshape(keys.shape[0], -1))
        self.batch_size = _positive_int(batch_size, "batch_size")
        self.bucket_size_multiplier = _positive_int(
            bucket_size_multiplier, "bucket_size_multiplier"
        )
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"BucketBatchSampler seed={seed!r} must be an int")
        self.shuffle = bool(shuffle)
        self.seed = seed
        self.drop_last = bool(drop_last)
        self._epoch = 0
        self._consumed = 0

    @property
    def epoch(self) -> int:
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next iteration uses.

        Setting the current epoch again keeps the count of consumed batches (so calling it at
        the top of the epoch loop after a resume does not restart the epoch).
        """
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"BucketBatchSampler.set_epoch({epoch!r}): epoch must be an int >= 0")
        if epoch != self._epoch:
            self._epoch = epoch
            self._consumed = 0

    def __len__(self) -> int:
        n = self._num_rows
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def batches(self, epoch: int | None = None) -> list[list[int]]:
        """All batches of ``epoch`` (default: the current one), in order."""
        epoch = self._epoch if epoch is None else epoch
        size = self.batch_size
        if not self.shuffle:
            return [b.tolist() for b in self._drop_short(list(_argsort(self._key).split(size)))]  # type: ignore[no-untyped-call]
        generator = torch.Generator()
        generator.manual_seed((self.seed * _SEED_STRIDE + epoch) % 2**63)
        order = torch.randperm(self._num_rows, generator=generator)
        batches: list[Tensor] = []
        for chunk in order.split(size * self.bucket_size_multiplier):  # type: ignore[no-untyped-call]
            # index_select: much faster than advanced indexing on small tensors
            ranked = chunk.index_select(0, _argsort(self._key.index_select(0, chunk)))
            batches.extend(ranked.split(size))
        batches = self._drop_short(batches)
        return [batches[i].tolist() for i in torch.randperm(len(batches), generator=generator)]

    def _drop_short(self, batches: list[Tensor]) -> list[Tensor]:
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            return batches[:-1]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches()[self._consumed :]:
            self._consumed += 1
            yield batch
        self._epoch += 1
        self._consumed = 0

    def state_dict(self) -> dict[str, int]:
        """Epoch and batches consumed in it, plus what checks a resumed sampler matches."""
        return {
            "epoch": self._epoch,
            "batches_consumed": self._consumed,
            "num_rows": self._num_rows,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "bucket_size_multiplier": self.bucket_size_multiplier,
            "shuffle": int(self.shuffle),
            "drop_last": int(self.drop_last),
        }

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Continue from :meth:`state_dict`; rejects state from a differently configured sampler."""
        mine = self.state_dict()
        for key in _CONFIG_KEYS:
            if key in state and state[key] != mine[key]:
                raise ValueError(
                    f"BucketBatchSampler state has {key}={state[key]!r} but this sampler has "
                    f"{mine[key]!r}; resume with the same dataset and sampler settings"
                )
        epoch, consumed = state.get("epoch"), state.get("batches_consumed")
        if (
            not isinstance(epoch, int)
            or epoch < 0
            or not isinstance(consumed, int)
            or not 0 <= consumed <= len(self)
        ):
            raise ValueError(
                f"BucketBatchSampler state has epoch={epoch!r}, batches_consumed={consumed!r}; "
                f"expected ints with epoch >= 0 and 0 <= batches_consumed <= {len(self)}"
            )
        self._epoch, self._consumed = epoch, consumed
