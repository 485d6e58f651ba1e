"""An ensemble of encoder–decoders that decodes with the average of its members' log-probabilities.

``Ensemble(models)`` follows the seq2seq protocol itself, so greedy decoding, beam search and
:class:`~partwise.seq2seq.Seq2SeqTask` evaluation use it as they use one model: every member encodes
the source, and at each step the ensemble's scores are the mean of the members' log-softmax outputs
(renormalised by the decoding functions), the usual way to ensemble sequence models (e.g. Sutskever
et al. 2014). Members may differ in architecture (GRU and Transformer) but must share the target
vocabulary size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ._protocol import Memory

__all__ = ["Ensemble", "EnsembleMemory"]


@dataclass(frozen=True)
class EnsembleMemory:
    """One :class:`Memory` per member, selected and moved together."""

    members: tuple[Memory, ...]

    @property
    def mask(self) -> Tensor:
        return self.members[0].mask

    @property
    def batch_size(self) -> int:
        return self.members[0].batch_size

    def index_select(self, index: Tensor) -> EnsembleMemory:
        return EnsembleMemory(tuple(m.index_select(index) for m in self.members))

    def detach(self) -> EnsembleMemory:
        return EnsembleMemory(tuple(m.detach() for m in self.members))

    def to(self, device: torch.device | str) -> EnsembleMemory:
        return EnsembleMemory(tuple(m.to(device) for m in self.members))


def _log_probs(logits: Tensor) -> Tensor:
    return torch.log_softmax(logits.float(), dim=-1)


class _EnsembleDecoder(nn.Module):
    def __init__(self, decoders: Sequence[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(decoders)

    def _each(self) -> list[Any]:  # the members, each a protocol decoder (initial_state, step, reorder_state)
        return list(self.members)

    def initial_state(self, memory: EnsembleMemory) -> tuple[Any, ...]:
        return tuple(d.initial_state(m) for d, m in zip(self._each(), memory.members, strict=True))

    def forward(self, prev_tokens: Tensor, memory: EnsembleMemory, state: tuple[Any, ...]) -> Tensor:
        outs = [_log_probs(d(prev_tokens, m, s)) for d, m, s in zip(self.members, memory.members, state, strict=True)]
        return torch.stack(outs).mean(0)

    def step(self, prev_token: Tensor, memory: EnsembleMemory,
             state: tuple[Any, ...]) -> tuple[Tensor, tuple[Any, ...]]:
        logits, states = [], []
        for d, m, s in zip(self._each(), memory.members, state, strict=True):
            out, new = d.step(prev_token, m, s)
            logits.append(_log_probs(out))
            states.append(new)
        return torch.stack(logits).mean(0), tuple(states)

    def reorder_state(self, state: tuple[Any, ...], index: Tensor) -> tuple[Any, ...]:
        return tuple(d.reorder_state(s, index) for d, s in zip(self._each(), state, strict=True))


class _EnsembleEncoder(nn.Module):
    def __init__(self, models: Sequence[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(models)

    def forward(self, src: Tensor, src_mask: Tensor) -> EnsembleMemory:
        return EnsembleMemory(tuple(m.encode(src, src_mask) for m in self.members))  # type: ignore[operator]


class Ensemble(nn.Module):
    """Models that follow the seq2seq protocol, decoding together by the mean of their log-probabilities.

    Examples:
        >>> import torch
        >>> from partwise.seq2seq import Ensemble, greedy_decode, gru_seq2seq
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <...>
        >>> a = gru_seq2seq(10, 12, emb=8, hidden=8).eval()
        >>> src = torch.tensor([[4, 5, 6]])
        >>> greedy_decode(Ensemble([a, a]), src, src != 0, 5) == greedy_decode(a, src, src != 0, 5)
        True
    """

    def __init__(self, models: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(models) < 1:
            raise ValueError("Ensemble needs at least one model")
        self.models = nn.ModuleList(models)
        self.encoder = _EnsembleEncoder(models)
        self.decoder = _EnsembleDecoder([m.decoder for m in models])  # type: ignore[misc]

    def encode(self, src: Tensor, src_mask: Tensor) -> EnsembleMemory:
        out: EnsembleMemory = self.encoder(src, src_mask)
        return out

    def forward(self, src: Tensor, src_mask: Tensor, prev_tokens: Tensor) -> Tensor:
        memory = self.encode(src, src_mask)
        out: Tensor = self.decoder(prev_tokens, memory, self.decoder.initial_state(memory))
        return out
