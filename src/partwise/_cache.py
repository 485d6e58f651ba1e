"""Frozen-encoder output cache: a frozen, deterministic encoder runs once per dataset, not every step.

A task opts in by providing, besides ``loss`` and ``evaluate``:

* ``encoder_of(model) -> nn.Module`` — the module whose outputs are cached;
* ``encode(model, batch)`` — its output for a batch;
* ``loss_from_encoding(model, batch, encoding, ctx) -> Tensor`` — the loss given that output;
* ``split_encoding(encoding, batch) -> list[dict[str, Tensor]]`` and
  ``merge_encoding(rows, batch) -> encoding`` — per-row pieces and back (rows may differ in length
  along their first dimension);
* ``row_ids(batch) -> Tensor`` — a stable id per dataset row (``Batch.index`` for seq2seq).

The cache is used only when every parameter of the encoder is frozen, every module of it is in eval
mode, and two passes over the same batch give bitwise-equal outputs; on the first training batch the
cached outputs are compared with live ones. Past ``spill_bytes`` the rows live in memory-mapped files.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ._errors import CacheRefused

__all__ = ["EncoderCache", "CacheRefused", "supports_cache", "cache_blockers"]

_METHODS = ("encoder_of", "encode", "loss_from_encoding", "split_encoding", "merge_encoding", "row_ids")


def supports_cache(task: Any) -> bool:
    return all(callable(getattr(task, m, None)) for m in _METHODS)


def cache_blockers(task: Any, model: nn.Module, world: int) -> list[str]:
    """Why the encoder's outputs cannot be cached right now (empty: they can)."""
    if not supports_cache(task):
        missing = [m for m in _METHODS if not callable(getattr(task, m, None))]
        return [f"the task does not support caching (missing {', '.join(missing)})"]
    out = []
    encoder = task.encoder_of(model)
    if any(p.requires_grad for p in encoder.parameters()):
        out.append("the encoder has trainable parameters")
    if any(m.training for m in encoder.modules()):
        out.append("part of the encoder is in train mode (frozen with norm/dropout='train'?)")
    if world > 1:
        out.append("caching is single-process only")
    return out


def _rows_equal(a: list[dict[str, torch.Tensor]], b: list[dict[str, torch.Tensor]], exact: bool) -> bool:
    for ra, rb in zip(a, b, strict=True):
        for k in ra:
            x, y = ra[k].float(), rb[k].float()
            if x.shape != y.shape:
                return False
            if not (torch.equal(x, y) if exact else torch.allclose(x, y, rtol=1e-4, atol=1e-5)):
                return False
    return True


class EncoderCache:
    """Per-row encoder outputs for one dataset, looked up by row id."""

    def __init__(self, task: Any, columns: dict[str, tuple[torch.Tensor, torch.Tensor, tuple[int, ...]]],
                 slot: dict[int, int]):
        self.task, self.columns, self.slot = task, columns, slot
        self.verified = False

    @property
    def nbytes(self) -> int:
        return sum(flat.numel() * flat.element_size() for flat, _, _ in self.columns.values())

    @classmethod
    @torch.no_grad()
    def build(cls, task: Any, model: nn.Module, dataset: Dataset, collate_fn: Any, device: torch.device,
              batch_size: int = 256, spill_dir: str | Path | None = None, spill_bytes: int = 2 << 30) -> EncoderCache:
        """Encode every row of ``dataset`` once. Raises :class:`CacheRefused` if the encoder is not
        deterministic (two passes over the first batch differ)."""
        from ._loader import move_to

        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_fn,
                            generator=torch.Generator())  # never touches the global RNG
        pieces: dict[str, list[torch.Tensor]] = {}
        slot: dict[int, int] = {}
        for i, batch in enumerate(loader):
            batch = move_to(batch, device)
            rows = task.split_encoding(task.encode(model, batch), batch)
            if i == 0:
                again = task.split_encoding(task.encode(model, batch), batch)
                if not _rows_equal(rows, again, exact=True):
                    raise CacheRefused("the encoder is not deterministic: two passes over the same batch differ "
                                       "(a random layer active, or random input augmentation); train without the cache")
            for rid, row in zip(task.row_ids(batch).tolist(), rows, strict=True):
                slot[rid] = len(slot)
                for k, t in row.items():
                    pieces.setdefault(k, []).append(t.detach().cpu())
        columns = {}
        total = sum(t.numel() * t.element_size() for ts in pieces.values() for t in ts)
        for k, ts in pieces.items():
            sizes = torch.tensor([t.shape[0] if t.dim() else 1 for t in ts])
            offsets = torch.cat([torch.zeros(1, dtype=torch.long), sizes.cumsum(0)])
            flat = torch.cat([t.reshape(-1, *t.shape[1:]) if t.dim() else t.reshape(1) for t in ts])
            if spill_dir is not None and total > spill_bytes:
                flat = _spill(flat, Path(spill_dir) / f"{k}.bin")
            columns[k] = (flat, offsets, tuple(ts[0].shape[1:]))
        return cls(task, columns, slot)

    def rows(self, ids: Iterable[int]) -> list[dict[str, torch.Tensor]]:
        out = []
        for rid in ids:
            if rid not in self.slot:
                raise CacheRefused(f"row {rid} is not in the cache: the training data changed after it was built")
            s = self.slot[rid]
            out.append({k: flat[off[s] : off[s + 1]] for k, (flat, off, _) in self.columns.items()})
        return out

    def lookup(self, batch: Any, device: torch.device) -> Any:
        rows = [{k: v.to(device, non_blocking=True) for k, v in r.items()}
                for r in self.rows(self.task.row_ids(batch).tolist())]
        return self.task.merge_encoding(rows, batch)

    @torch.no_grad()
    def verify(self, model: nn.Module, batch: Any, device: torch.device) -> None:
        """Compare cached and live outputs on one batch; raise :class:`CacheRefused` if they differ."""
        cached = self.rows(self.task.row_ids(batch).tolist())
        live = [{k: v.cpu() for k, v in r.items()} for r in self.task.split_encoding(self.task.encode(model, batch), batch)]
        if not _rows_equal(live, cached, exact=False):
            raise CacheRefused("cached encoder outputs differ from live ones on the first training batch "
                               "(the encoder or the data changed after the cache was built)")
        self.verified = True


def _spill(flat: torch.Tensor, path: Path) -> torch.Tensor:
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.lib.format.open_memmap(path, mode="w+", dtype=flat.numpy().dtype, shape=tuple(flat.shape))
    array[...] = flat.numpy()
    array.flush()
    return torch.from_numpy(np.lib.format.open_memmap(path, mode="r+"))
