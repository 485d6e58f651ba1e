"""The encoder–decoder protocol that partwise's seq2seq tools (teacher forcing, decoding, the
trainer's seq2seq task) rely on. Users' own models implement it by duck typing; no base class.

Token conventions (shared with :mod:`partwise.data`): ``PAD=0``, ``UNK=1``, ``BOS=2``, ``EOS=3``.

An **encoder** maps padded source tokens to a :class:`Memory`::

    memory = encoder(src, src_mask)          # src: (B, S) long, src_mask: (B, S) bool, True = real

A **decoder** has two ways to run:

* parallel, teacher-forced, over a whole target at once::

      logits = decoder(prev_tokens, memory, state)     # prev_tokens: (B, T) -> logits (B, T, V)

* incremental, one token at a time, for free running and decoding::

      logits, state = decoder.step(prev_token, memory, state)   # prev_token: (B,) -> (B, V)

plus ``state = decoder.initial_state(memory)`` (the state before the first step, e.g. a GRU
hidden state derived from the encoder's final state; ``None`` for a Transformer, whose cache is
created on the first step) and ``state = decoder.reorder_state(state, index)`` (select/repeat
batch rows, used by beam search). ``decoder.forward`` with the same ``prev_tokens`` must give the
same logits as calling ``step`` position by position (up to float tolerance).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

__all__ = ["PAD", "UNK", "BOS", "EOS", "Memory", "Encoder", "Decoder"]

PAD, UNK, BOS, EOS = 0, 1, 2, 3


@dataclass(frozen=True)
class Memory:
    """What an encoder hands to a decoder.

    Attributes:
        states: encoder outputs, ``(B, S, H)``.
        mask: ``(B, S)`` bool, ``True`` at real (non-padding) source positions.
        final: optional summary used to initialise a recurrent decoder, e.g. ``(layers, B, H)``.
    """

    states: Tensor
    mask: Tensor
    final: Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.states.shape[0]

    def index_select(self, index: Tensor) -> Memory:
        """Rows ``index`` of the batch (repeat rows for beams: ``index = arange(B).repeat_interleave(k)``)."""
        final = None if self.final is None else self.final.index_select(1, index)
        return replace(
            self, states=self.states.index_select(0, index), mask=self.mask.index_select(0, index), final=final
        )

    def detach(self) -> Memory:
        final = None if self.final is None else self.final.detach()
        return replace(self, states=self.states.detach(), mask=self.mask, final=final)

    def to(self, device: torch.device | str) -> Memory:
        final = None if self.final is None else self.final.to(device)
        return replace(self, states=self.states.to(device), mask=self.mask.to(device), final=final)


@runtime_checkable
class Encoder(Protocol):
    def __call__(self, src: Tensor, src_mask: Tensor) -> Memory: ...


@runtime_checkable
class Decoder(Protocol):
    def __call__(self, prev_tokens: Tensor, memory: Memory, state: Any = None) -> Tensor: ...

    def initial_state(self, memory: Memory) -> Any: ...

    def step(self, prev_token: Tensor, memory: Memory, state: Any) -> tuple[Tensor, Any]: ...

    def reorder_state(self, state: Any, index: Tensor) -> Any: ...
