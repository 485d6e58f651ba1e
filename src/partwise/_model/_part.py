"""What a part is, read only: :class:`Part` (the parameters a part owns and the modules it covers)
and :class:`SharedTensor` (one tensor reachable under several names). :class:`~partwise.Parts`
builds them; nothing here freezes anything.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from . import _freezing as fz

__all__ = ["Part", "SharedTensor"]


@dataclass(frozen=True)
class SharedTensor:
    """One ``Parameter`` reachable under several names (tied embeddings, T5-style shared tables).

    ``owner`` is the part the tensor belongs to; ``parts`` every part whose selectors reach it (all in
    ``Parts.names``). Names no selector reaches are aliases of the owner's tensor.
    """

    names: tuple[str, ...]
    owner: str
    parts: tuple[str, ...]


class Part:
    """A named piece of a model: the parameters it owns and the modules it covers, read the way an
    ``nn.Module`` is read (``parameters()``, ``named_parameters()``, ``buffers()``, ``modules()``).

    ``partial`` lists modules a selector named whose parameters are only partly this part's: they are
    pinned to eval only while every part owning them is frozen.

    Examples:
        >>> model = nn.Sequential(nn.Linear(2, 3), nn.Dropout(0.1))
        >>> from partwise import Parts
        >>> part = Parts(model)["0"]
        >>> [n for n, _ in part.named_parameters()], part.numel
        (['0.weight', '0.bias'], 9)
    """

    def __init__(self, name: str, selectors: tuple[str, ...]):
        self.name = name
        self.selectors = selectors
        self.partial: list[str] = []
        self._params: dict[str, nn.Parameter] = {}
        self._modules: dict[str, nn.Module] = {}

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """``(name, parameter)`` for every parameter the part owns (a tied tensor once)."""
        return iter(self._params.items())

    def parameters(self) -> Iterator[nn.Parameter]:
        return iter(self._params.values())

    def named_modules(self) -> Iterator[tuple[str, nn.Module]]:
        """``(path, module)`` for every module the part covers (see :class:`Parts`)."""
        return iter(self._modules.items())

    def modules(self) -> Iterator[nn.Module]:
        return iter(self._modules.values())

    def named_buffers(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Buffers of the modules the part covers."""
        for path, m in self._modules.items():
            for bname, buf in m.named_buffers(recurse=False):
                if buf is not None:
                    yield (f"{path}.{bname}" if path else bname), buf

    def buffers(self) -> Iterator[torch.Tensor]:
        return (b for _, b in self.named_buffers())

    @property
    def numel(self) -> int:
        """Number of elements over the part's parameters."""
        return sum(p.numel() for p in self._params.values())

    @property
    def num_parameters(self) -> int:
        """Number of parameter tensors the part owns."""
        return len(self._params)

    @property
    def fixed(self) -> list[str]:
        """Names of parameters that are not trainable by nature (created with ``requires_grad=False``,
        e.g. sinusoidal position tables): partwise never makes them trainable."""
        return [n for n, p in self._params.items() if not fz.trainable_by_nature(p)]

    def __repr__(self) -> str:
        return f"Part({self.name!r}, {self.num_parameters} tensors, {self.numel:,} elements)"
