"""``Seq2Seq``: an encoder and a decoder composed into one module, plus argument checks shared by
the reference models."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from partwise.seq2seq._protocol import Memory

__all__ = ["Seq2Seq", "check_dropout", "check_positive_int", "check_source"]

_DECODER_METHODS = ("initial_state", "step", "reorder_state")


class Seq2Seq(nn.Module):
    """An encoder–decoder pair. Holds exactly two children, ``encoder`` and ``decoder``.

    The encoder maps ``(src, src_mask)`` to a :class:`Memory`; the decoder follows the protocol
    of :mod:`partwise.seq2seq` (``forward``, ``initial_state``, ``step``,
    ``reorder_state``). The reference decoders keep their output projection at ``decoder.out``,
    so a new head is a one-line swap: ``model.decoder.out = nn.Linear(hidden, new_vocab)``.

    Args:
        encoder: module called as ``encoder(src, src_mask) -> Memory``.
        decoder: module following the decoder protocol.

    Examples:
        >>> from partwise.seq2seq import GRUDecoder, GRUEncoder, Seq2Seq
        >>> model = Seq2Seq(GRUEncoder(30, 16, 32), GRUDecoder(40, 16, 32))
        >>> sorted(dict(model.named_children()))
        ['decoder', 'encoder']
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module) -> None:
        super().__init__()
        for name, part in (("encoder", encoder), ("decoder", decoder)):
            if not isinstance(part, nn.Module):
                raise TypeError(
                    f"Seq2Seq(): {name} must be a torch.nn.Module, got {type(part).__name__}; "
                    "wrap your callable in an nn.Module so its parameters are registered"
                )
        missing = [m for m in _DECODER_METHODS if not callable(getattr(decoder, m, None))]
        if missing:
            raise TypeError(
                f"Seq2Seq(): decoder {type(decoder).__name__} lacks {', '.join(missing)}; "
                "implement the decoder protocol described in partwise.seq2seq (help(partwise.seq2seq))"
            )
        self.encoder = encoder
        self.decoder = decoder

    def encode(self, src: Tensor, src_mask: Tensor) -> Memory:
        """Run the encoder: ``src`` ``(B, S)`` long, ``src_mask`` ``(B, S)`` bool, True = real token."""
        memory = self.encoder(src, src_mask)
        if not isinstance(memory, Memory):
            raise TypeError(
                f"Seq2Seq.encode(): encoder {type(self.encoder).__name__} returned "
                f"{type(memory).__name__}; it must return partwise.seq2seq.Memory"
            )
        return memory

    def forward(self, src: Tensor, src_mask: Tensor, prev_tokens: Tensor) -> Tensor:
        """Teacher-forced logits ``(B, T, V)`` for decoder inputs ``prev_tokens`` ``(B, T)``
        (the target shifted right, starting with ``BOS``)."""
        return self.decoder(prev_tokens, self.encode(src, src_mask))


def check_positive_int(value: Any, name: str, where: str) -> int:
    """Return ``value`` if it is an int >= 1, else raise a TypeError/ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{where}: {name}={value!r} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{where}: {name}={value} must be >= 1")
    return value


def check_dropout(value: Any, where: str) -> float:
    """Return ``value`` as a float if it lies in ``[0, 1)``, else raise naming it."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{where}: dropout={value!r} must be a float, got {type(value).__name__}")
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{where}: dropout={value} must be in [0, 1)")
    return float(value)


def check_source(src: Tensor, src_mask: Tensor, where: str) -> Tensor:
    """Validate a padded source batch; return its lengths ``(B,)`` (number of real tokens per row)."""
    if src.dim() != 2 or src.dtype != torch.long:
        raise ValueError(
            f"{where}: src must be a (B, S) long tensor of token ids, got shape {tuple(src.shape)} "
            f"dtype {src.dtype}"
        )
    if src_mask.shape != src.shape or src_mask.dtype != torch.bool:
        raise ValueError(
            f"{where}: src_mask must be a bool tensor shaped like src {tuple(src.shape)} (True = real "
            f"token), got shape {tuple(src_mask.shape)} dtype {src_mask.dtype}"
        )
    lengths = src_mask.sum(dim=1)
    if src.shape[0] > 0 and bool((lengths == 0).any()):
        rows = torch.nonzero(lengths == 0).flatten().tolist()[:5]
        raise ValueError(f"{where}: source rows {rows} are empty (no True in src_mask); drop them")
    return lengths
