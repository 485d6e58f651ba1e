"""Checkpoint averaging: the mean of the weights of a run's last checkpoints, as a checkpoint of its own.

Averaging the parameters of the last few checkpoints of one run (Vaswani et al. 2017, "Attention Is
All You Need", section 6.1: the last 5 checkpoints, written at 10-minute intervals) lands between the
points the optimizer oscillates around late in training; it usually scores a little better than any
one of them, at no training cost. Only checkpoints of the same run (same parts, tensor names, shapes
and dtypes) can be averaged.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from .._errors import CheckpointError
from . import _checkpoint as ckpt

__all__ = ["average_checkpoints"]


def average_checkpoints(checkpoints: Sequence[str | Path], out: str | Path) -> Path:
    """Write the average of ``checkpoints``' weights as the checkpoint folder ``out``; returns it.

    Floating-point tensors are averaged (in float64, then cast back); integer and boolean buffers
    (counters, masks) are taken from the last checkpoint, as are its training state and meta, which
    gains ``averaged_from`` (the names averaged). ``out`` is written atomically beside them (a
    temporary folder, then a rename); an existing ``out`` is replaced the same way. Checkpoints that
    differ in parts, tensor names, shapes or dtypes raise :class:`~partwise.CheckpointError` listing
    every difference, before anything is written.

    Examples:
        >>> import partwise as pw  # doctest: +SKIP
        >>> last = pw.epoch_end_checkpoints("runs/g2p/checkpoints")[-5:]  # doctest: +SKIP
        >>> pw.average_checkpoints(last, "runs/g2p/checkpoints/averaged")  # doctest: +SKIP
    """
    paths = [Path(c) for c in checkpoints]
    if len(paths) < 2:
        raise CheckpointError(f"average_checkpoints: {len(paths)} checkpoint(s) given; averaging needs at least two")
    metas = [ckpt.read_meta(p) for p in paths]
    first = metas[0]["parts"]
    problems = [f"{p}: parts {sorted(m['parts'])} differ from {sorted(first)} in {paths[0]}"
                for p, m in zip(paths[1:], metas[1:], strict=True) if set(m["parts"]) != set(first)]
    if problems:
        raise ckpt.mismatch_error("average_checkpoints: the checkpoints are not of one model", problems,
                                  "average checkpoints of the same run")
    averaged: dict[str, dict[str, torch.Tensor]] = {}
    for part in first:
        tensors = [ckpt.read_part(p, m["parts"][part]) for p, m in zip(paths, metas, strict=True)]
        averaged[part] = _average_part(part, tensors, paths)
    out = Path(out)
    meta = {k: v for k, v in metas[-1].items() if k != "parts"}
    meta["averaged_from"] = [p.name for p in paths]
    state = ckpt.load_state(paths[-1])
    written = ckpt.write_checkpoint(out.parent, out.name, averaged, state, meta, pointers=(), keep=None)
    if written != out:  # a pointer names ``out``: written as out.N beside it; keep that name
        return written
    return out


def _average_part(part: str, tensors: list[dict[str, torch.Tensor]], paths: list[Path]) -> dict[str, torch.Tensor]:
    reference = tensors[0]
    problems = []
    for path, other in zip(paths[1:], tensors[1:], strict=True):
        problems += [f"{path}: {k} of part {part!r} is missing" for k in reference if k not in other]
        problems += [f"{path}: {k} of part {part!r} is not in {paths[0]}" for k in other if k not in reference]
        problems += [f"{path}: {k} has shape {tuple(other[k].shape)} and dtype {other[k].dtype}, "
                     f"{paths[0]} has {tuple(t.shape)} and {t.dtype}"
                     for k, t in reference.items() if k in other and (other[k].shape != t.shape
                                                                      or other[k].dtype != t.dtype)]
    if problems:
        raise ckpt.mismatch_error("average_checkpoints: the checkpoints are not of one model", problems,
                                  "average checkpoints of the same run")
    out = {}
    for key, t in reference.items():
        if t.is_floating_point():
            total = torch.zeros(t.shape, dtype=torch.float64)
            for other in tensors:
                total += other[key].double()
            out[key] = (total / len(tensors)).to(t.dtype)
        else:
            out[key] = tensors[-1][key].clone()
    return out

