"""A map-style seq2seq dataset of encoded pairs and the padded :class:`Batch` it collates to."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import NamedTuple

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import Dataset

from partwise.data._gc import paused_gc
from partwise.data._vocab import Vocab
from partwise.seq2seq._protocol import PAD

__all__ = ["Batch", "Seq2SeqDataset", "Seq2SeqItem", "collate"]


class Seq2SeqItem(NamedTuple):
    """One dataset row: ``src`` = source ids + EOS, ``tgt`` = BOS + target ids + EOS."""

    index: int  # type: ignore[assignment]  # the row id; shadows tuple.index, as NamedTuple fields may
    src: Tensor
    tgt: Tensor


@dataclass(frozen=True)
class Batch:
    """A padded batch (PAD = 0).

    Attributes:
        src: ``(B, S)`` long, source ids + EOS.
        src_mask: ``(B, S)`` bool, ``True`` at real (non-padding) source positions.
        tgt_in: ``(B, T)`` long, BOS + target ids (decoder input under teacher forcing).
        tgt_out: ``(B, T)`` long, target ids + EOS (what the decoder must predict).
        index: ``(B,)`` long, the dataset rows in this batch.
        num_tokens: real target tokens in ``tgt_out`` (computed on the CPU, so reading it
            never waits for a device).
    """

    src: Tensor
    src_mask: Tensor
    tgt_in: Tensor
    tgt_out: Tensor
    index: Tensor
    num_tokens: int

    @property
    def batch_size(self) -> int:
        return self.src.shape[0]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """The same batch with every tensor on ``device``."""
        return replace(
            self,
            src=self.src.to(device, non_blocking=non_blocking),
            src_mask=self.src_mask.to(device, non_blocking=non_blocking),
            tgt_in=self.tgt_in.to(device, non_blocking=non_blocking),
            tgt_out=self.tgt_out.to(device, non_blocking=non_blocking),
            index=self.index.to(device, non_blocking=non_blocking),
        )

    def pin_memory(self) -> Batch:
        """Page-locked copy; ``DataLoader(pin_memory=True)`` calls this."""
        return replace(
            self,
            src=self.src.pin_memory(),
            src_mask=self.src_mask.pin_memory(),
            tgt_in=self.tgt_in.pin_memory(),
            tgt_out=self.tgt_out.pin_memory(),
            index=self.index.pin_memory(),
        )


def _flatten(rows: list[list[int]]) -> tuple[Tensor, Tensor]:
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    offsets = torch.zeros(len(rows) + 1, dtype=torch.long)
    torch.cumsum(lengths, 0, out=offsets[1:])
    flat = torch.tensor([i for r in rows for i in r], dtype=torch.long)
    return flat, offsets


class Seq2SeqDataset(Dataset[Seq2SeqItem]):
    """Encoded ``(source tokens, target tokens)`` pairs, stored as two flat tensors.

    Args:
        pairs: ``(src_tokens, tgt_tokens)`` per row; both sides non-empty token lists.
        src_vocab: vocabulary of the source side (unknown tokens become UNK).
        tgt_vocab: vocabulary of the target side.
        references: optional per-row list of acceptable targets for scoring (e.g. all
            pronunciations of a word); default: each row's own target.

    Use with ``DataLoader(dataset, batch_sampler=..., collate_fn=collate)``.

    Examples:
        >>> v = Vocab.build([["a", "b"]])
        >>> ds = Seq2SeqDataset([(["a", "b"], ["b"])], v, v)
        >>> ds[0].src.tolist(), ds[0].tgt.tolist()
        ([4, 5, 3], [2, 5, 3])
    """

    def __init__(
        self,
        pairs: Iterable[tuple[Sequence[str], Sequence[str]]],
        src_vocab: Vocab,
        tgt_vocab: Vocab,
        references: Sequence[list[list[str]]] | None = None,
    ) -> None:
        rows = list(pairs)
        if not rows:
            raise ValueError(
                "Seq2SeqDataset got no pairs; pass at least one (src_tokens, tgt_tokens) pair"
            )
        for i, row in enumerate(rows):
            if (
                len(row) != 2
                or isinstance(row[0], str)
                or isinstance(row[1], str)
                or not row[0]
                or not row[1]
            ):
                raise ValueError(
                    f"Seq2SeqDataset pair {i} is {row!r}; each pair must be (src_tokens, tgt_tokens) "
                    "with two non-empty token lists, e.g. (list('cat'), 'K AE T'.split())"
                )
        if references is not None and len(references) != len(rows):
            raise ValueError(
                f"Seq2SeqDataset got {len(references)} references for {len(rows)} pairs; "
                "pass one list of acceptable targets per pair"
            )
        self.src_vocab = src_vocab
        self.tgt_vocab = tgt_vocab
        with paused_gc():
            self.sources: list[list[str]] = [list(src) for src, _ in rows]
            self.references: list[list[list[str]]] = (
                [[list(tgt)] for _, tgt in rows] if references is None else list(references)
            )
            self._src, self._src_offsets = _flatten(
                [src_vocab.encode(s, add_eos=True) for s, _ in rows]
            )
            self._tgt, self._tgt_offsets = _flatten(
                [tgt_vocab.encode(t, add_bos=True, add_eos=True) for _, t in rows]
            )

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, index: int) -> Seq2SeqItem:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"Seq2SeqDataset index {index} out of range for {n} rows")
        index %= n
        so, to = self._src_offsets, self._tgt_offsets
        return Seq2SeqItem(
            index,
            self._src[so[index] : so[index + 1]],
            self._tgt[to[index] : to[index + 1]],
        )

    def fingerprint(self) -> str:
        """A digest of every row's token ids (what a checkpoint compares on resume).

        Examples:
            >>> v = Vocab.build([["a", "b"]])
            >>> a, b = Seq2SeqDataset([(["a"], ["b"])], v, v), Seq2SeqDataset([(["b"], ["b"])], v, v)
            >>> a.fingerprint() == b.fingerprint()
            False
        """
        h = hashlib.blake2b(digest_size=16)
        for t in (self._src, self._src_offsets, self._tgt, self._tgt_offsets):
            h.update(t.contiguous().numpy().tobytes())
        return h.hexdigest()

    @property
    def src_lengths(self) -> Tensor:
        """``(N,)`` source lengths including EOS."""
        return self._src_offsets.diff()

    @property
    def tgt_lengths(self) -> Tensor:
        """``(N,)`` decoder lengths: target tokens + 1 (the length of ``tgt_in`` and ``tgt_out``)."""
        return self._tgt_offsets.diff() - 1

    @property
    def lengths(self) -> Tensor:
        """``(N, 2)`` source and decoder lengths per row, for :class:`BucketBatchSampler`."""
        return torch.stack([self.src_lengths, self.tgt_lengths], dim=1)


def collate(items: Sequence[Seq2SeqItem]) -> Batch:
    """Pad dataset rows into a :class:`Batch`.

    Examples:
        >>> v = Vocab.build([["a", "b"]])
        >>> ds = Seq2SeqDataset([(["a"], ["b"]), (["a", "b"], ["a", "b"])], v, v)
        >>> b = collate([ds[0], ds[1]])
        >>> b.src.tolist(), b.tgt_in.tolist(), b.tgt_out.tolist(), b.num_tokens
        ([[4, 3, 0], [4, 5, 3]], [[2, 5, 0], [2, 4, 5]], [[5, 3, 0], [4, 5, 3]], 5)
    """
    if not items:
        raise ValueError("collate got an empty list of items; batches need at least one row")
    srcs = [item.src for item in items]
    src = pad_sequence(srcs, batch_first=True, padding_value=PAD)
    src_len = torch.tensor([len(s) for s in srcs], dtype=torch.long)
    src_mask = torch.arange(src.shape[1]) < src_len[:, None]
    tgt_in = pad_sequence([item.tgt[:-1] for item in items], batch_first=True, padding_value=PAD)
    tgt_out = pad_sequence([item.tgt[1:] for item in items], batch_first=True, padding_value=PAD)
    index = torch.tensor([item.index for item in items], dtype=torch.long)
    num_tokens = sum(len(item.tgt) - 1 for item in items)
    return Batch(src, src_mask, tgt_in, tgt_out, index, num_tokens)
