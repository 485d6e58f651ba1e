"""Datasets and batching for HF encoder–decoders: padded dict batches with a row id per example."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from ._teacher_forcing import IGNORE

__all__ = ["Seq2SeqLMDataset", "Seq2SeqLMCollator"]


class Seq2SeqLMDataset(Dataset[dict[str, Any]]):
    """Rows (dicts of token-id lists or tensors: ``input_ids`` or ``input_features`` ..., ``labels``),
    each returned with its ``index`` (the row id the frozen-encoder cache keys on).

    Examples:
        >>> ds = Seq2SeqLMDataset([{"input_ids": [5, 6, 1], "labels": [7, 1]}])
        >>> ds[0]["index"], len(ds)
        (0, 1)
    """

    def __init__(self, rows: Sequence[Mapping[str, Any]]):
        bad = [i for i, r in enumerate(rows) if not isinstance(r, Mapping) or "labels" not in r]
        if bad:
            raise ValueError(f"row {bad[0]} is not a mapping with 'labels' (and encoder inputs such as 'input_ids')")
        self.rows = list(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {**self.rows[i], "index": i}

    @property
    def src_lengths(self) -> Tensor:
        """``(N,)`` encoder input lengths (``input_ids`` tokens; 1 per row for fixed-size inputs such as
        ``input_features``): the frozen-encoder cache encodes rows shortest first."""
        return torch.tensor([len(r["input_ids"]) if "input_ids" in r else 1 for r in self.rows], dtype=torch.long)


class Seq2SeqLMCollator:
    """Pads a list of rows into a batch: ``input_ids`` with ``pad_token_id`` (and an ``attention_mask``),
    ``labels`` with -100 (ignored by the loss), other tensors stacked; ``index`` kept.

    Examples:
        >>> batch = Seq2SeqLMCollator(pad_token_id=0)([{"input_ids": [5, 1], "labels": [7, 8, 1], "index": 0},
        ...                                            {"input_ids": [6], "labels": [1], "index": 1}])
        >>> batch["input_ids"].tolist(), batch["attention_mask"].tolist(), batch["labels"].tolist()
        ([[5, 1], [6, 0]], [[1, 1], [1, 0]], [[7, 8, 1], [1, -100, -100]])
    """

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    @staticmethod
    def _pad(seqs: list[Any], value: int) -> Tensor:
        tensors = [torch.as_tensor(s, dtype=torch.long) for s in seqs]
        return torch.nn.utils.rnn.pad_sequence(tensors, batch_first=True, padding_value=value)

    def __call__(self, rows: list[Mapping[str, Any]]) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for key in rows[0]:
            values = [r[key] for r in rows]
            if key == "labels":
                out[key] = self._pad(values, IGNORE)
            elif key in ("input_ids", "decoder_input_ids"):
                out[key] = self._pad(values, self.pad_token_id)
                if key == "input_ids" and "attention_mask" not in rows[0]:
                    out["attention_mask"] = self._pad([[1] * len(v) for v in values], 0)
            elif key == "index":
                out[key] = torch.as_tensor(values, dtype=torch.long)
            else:
                out[key] = torch.stack([torch.as_tensor(v) for v in values])
        return out
