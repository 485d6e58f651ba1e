"""Checks that frozen means frozen: a fingerprint guard and a per-part gradient report."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING

import torch

from .._errors import FrozenPartChanged
from ._freezing import is_norm

if TYPE_CHECKING:  # only for annotations: _parts imports this module
    from ._parts import Parts

__all__ = ["FrozenGuard", "grad_report", "GradReport", "fingerprint"]


def fingerprint(t: torch.Tensor) -> bytes:
    """A 16-byte digest of a tensor's exact bytes, dtype and shape (bitwise identity check)."""
    from torch.distributed.tensor import DTensor

    data = (t.to_local() if isinstance(t, DTensor) else t).detach().reshape(-1).contiguous()
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{data.dtype}{tuple(t.shape)}".encode())
    if data.numel():
        h.update(data.view(torch.uint8).cpu().numpy().tobytes())
    return h.digest()


class FrozenGuard:
    """Fingerprint every tensor of the frozen parts on entry; on exit raise
    :class:`~partwise.FrozenPartChanged` naming each one that changed bitwise.

    Parameters and buffers of every module a frozen part covers are checked (BatchNorm running
    statistics included, parameter-less layers too), except buffers of
    normalization layers frozen with ``norm="train"``, whose statistics are meant to move. Parts
    unfrozen inside the block are not checked. The cost is one pass over the frozen bytes at entry and
    at exit, so it can wrap a whole training run.

    Examples:
        >>> from torch import nn
        >>> m = nn.Sequential(); m.add_module("enc", nn.Linear(2, 2)); m.add_module("dec", nn.Linear(2, 2))
        >>> from partwise import Parts
        >>> parts = Parts(m); parts.freeze("enc")
        >>> with FrozenGuard(parts):
        ...     _ = m(torch.randn(3, 2)).sum().backward()
    """

    def __init__(self, parts: Parts, include_buffers: bool = True):
        self.parts = parts
        self.include_buffers = include_buffers
        self._before: dict[str, tuple[str, bytes]] = {}

    def _tensors(self) -> dict[str, tuple[str, torch.Tensor]]:
        out: dict[str, tuple[str, torch.Tensor]] = {}
        for name in self.parts.frozen_names:
            part = self.parts[name]
            for pname, p in part.named_parameters():
                out[pname] = (name, p)
            if not self.include_buffers:
                continue
            modes = self.parts.freeze_modes(name)
            norm_moves = modes is not None and modes[0] == "train"
            for path, m in part.named_modules():
                if norm_moves and is_norm(m):
                    continue
                for bname, buf in m.named_buffers(recurse=False):
                    if buf is not None:
                        out[f"{path}.{bname}" if path else bname] = (name, buf)
        if self.include_buffers:
            for path, m in self.parts.joint_pinned():
                for bname, buf in m.named_buffers(recurse=False):
                    if buf is not None:
                        out[f"{path}.{bname}" if path else bname] = ("+".join(self.parts.frozen_names), buf)
        return out

    def snapshot(self) -> None:
        """(Re)take the fingerprints now, e.g. after a planned transition froze another part."""
        self.parts.check_current()
        self._before = {k: (part, fingerprint(t)) for k, (part, t) in self._tensors().items()}

    def changed(self) -> list[str]:
        """Names of frozen tensors whose bytes differ from the snapshot (tensors still frozen only).

        Raises :class:`~partwise.PartError` if the model's parameters were replaced since the
        registry was built (the registry would be looking at tensors the model no longer uses)."""
        self.parts.check_current()
        now = self._tensors()
        changed = [
            f"{k} (part {part!r})"
            for k, (part, digest) in self._before.items()
            if k in now and fingerprint(now[k][1]) != digest
        ]
        return _on_every_rank(changed, now)

    def check(self) -> None:
        """Raise :class:`~partwise.FrozenPartChanged` if any frozen tensor changed since the snapshot."""
        changed = self.changed()
        if changed:
            raise FrozenPartChanged(changed)

    def __enter__(self) -> FrozenGuard:
        self.snapshot()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.check()


def _on_every_rank(changed: list[str], tensors: dict[str, tuple[str, torch.Tensor]]) -> list[str]:
    """A sharded model's (FSDP2) verdict, the same on every rank: each fingerprints its own shards,
    so the changes every rank found are gathered (one collective; every rank checks at the same step)."""
    import torch.distributed as tdist
    from torch.distributed.tensor import DTensor

    if not any(isinstance(t, DTensor) for _, t in tensors.values()) or not tdist.is_initialized():
        return changed
    everyone: list[list[str] | None] = [None] * tdist.get_world_size()
    tdist.all_gather_object(everyone, changed)
    return sorted({c for rank in everyone for c in rank or []})


@dataclass(frozen=True)
class PartGrad:
    part: str
    frozen: bool
    params: int
    with_grad: int
    norm: float

    @property
    def received(self) -> bool:
        return self.with_grad > 0


class GradReport:
    """Per part: did it receive gradient, and how large. ``str(report)`` prints a table."""

    def __init__(self, rows: list[PartGrad]):
        self.rows = {r.part: r for r in rows}

    def __getitem__(self, part: str) -> PartGrad:
        return self.rows[part]

    def received(self, part: str) -> bool:
        return self.rows[part].received

    def norm(self, part: str) -> float:
        return self.rows[part].norm

    def __str__(self) -> str:
        lines = [f"{'part':<16} {'state':<9} {'grads':>9} {'grad norm':>12}"]
        for r in self.rows.values():
            state = "frozen" if r.frozen else "trainable"
            grads = f"{r.with_grad}/{r.params}"
            norm = f"{r.norm:.4g}" if r.received else "none"
            lines.append(f"{r.part:<16} {state:<9} {grads:>9} {norm:>12}")
        return "\n".join(lines)

    __repr__ = __str__


def grad_report(parts: Parts) -> GradReport:
    """After ``backward()``: per part, how many parameters hold a gradient and the gradient's L2 norm.

    Examples:
        >>> from torch import nn
        >>> from partwise import Parts
        >>> m = nn.Sequential(); m.add_module("enc", nn.Linear(2, 2)); m.add_module("gen", nn.Linear(2, 2))
        >>> parts = Parts(m); parts.freeze("enc")
        >>> m(torch.randn(4, 2)).sum().backward()
        >>> report = grad_report(parts)
        >>> report.received("gen"), report.received("enc")
        (True, False)
    """
    rows = []
    for part in parts:
        grads = [p.grad for p in part.parameters() if p.grad is not None]
        norm = (float(torch.linalg.vector_norm(torch.stack([g.detach().float().norm() for g in grads])))
                if grads else 0.0)
        rows.append(PartGrad(part.name, parts.is_frozen(part.name), part.num_parameters, len(grads), norm))
    return GradReport(rows)
