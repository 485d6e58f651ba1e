"""Pre-norm Transformer encoder and decoder (Vaswani et al. 2017; pre-norm placement as in
Xiong et al. 2020, "On Layer Normalization in the Transformer Architecture") on
``torch.nn.functional.scaled_dot_product_attention``.

Positions are the fixed sinusoids of Vaswani et al. (section 3.5), held in a non-persistent buffer
of ``max_len`` rows: no parameters, nothing in the state dict, and sequences longer than
``max_len`` are rejected with a ValueError. Token embeddings are scaled by ``sqrt(d_model)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from partwise.seq2seq._model import Seq2Seq, check_dropout, check_positive_int, check_source
from partwise.seq2seq._protocol import PAD, Memory

__all__ = ["TransformerEncoder", "TransformerDecoder", "TransformerCache", "transformer_seq2seq"]


def _check_sizes(where: str, vocab_size: int, d_model: int, heads: int, layers: int, ff: int,
                 dropout: float, max_len: int) -> float:
    for name, value in (("vocab_size", vocab_size), ("d_model", d_model), ("heads", heads),
                        ("layers", layers), ("ff", ff), ("max_len", max_len)):
        check_positive_int(value, name, where)
    if d_model % heads:
        raise ValueError(
            f"{where}: d_model={d_model} is not divisible by heads={heads}; pick heads among the "
            f"divisors of d_model, e.g. {[h for h in range(1, min(d_model, 16) + 1) if d_model % h == 0]}"
        )
    return check_dropout(dropout, where)


class _Embedding(nn.Module):
    positions: Tensor  # a buffer: the sinusoidal table
    """Token embedding * sqrt(d_model) + sinusoidal position, then dropout."""

    def __init__(self, vocab_size: int, d_model: int, max_len: int, dropout: float) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab_size, d_model, padding_idx=PAD)
        nn.init.normal_(self.tokens.weight, std=d_model**-0.5)  # unit variance after the scaling
        with torch.no_grad():
            self.tokens.weight[PAD].zero_()
        self.scale = math.sqrt(d_model)
        position = torch.arange(max_len, dtype=torch.float32)[:, None]
        freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
        table = torch.zeros(max_len, d_model)
        table[:, 0::2] = torch.sin(position * freq)
        table[:, 1::2] = torch.cos(position * freq)[:, : d_model // 2]
        self.register_buffer("positions", table, persistent=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, tokens: Tensor, start: int, where: str) -> Tensor:
        end = start + tokens.shape[1]
        if end > self.positions.shape[0]:
            raise ValueError(
                f"{where}: sequence reaches position {end}, beyond max_len={self.positions.shape[0]}; "
                "build the model with a larger max_len or shorten the sequences"
            )
        x = self.tokens(tokens) * self.scale + self.positions[start:end].to(self.tokens.weight.dtype)
        return self.dropout(x)


class _Attention(nn.Module):
    """Multi-head attention with separate query and key/value projections (so keys/values of a
    memory or of past positions can be computed once and cached)."""

    def __init__(self, d_model: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.query = nn.Linear(d_model, d_model)
        self.key = nn.Linear(d_model, d_model)
        self.value = nn.Linear(d_model, d_model)
        self.proj = nn.Linear(d_model, d_model)

    def _split(self, x: Tensor) -> Tensor:  # (B, L, D) -> (B, heads, L, D / heads)
        return x.view(x.shape[0], x.shape[1], self.heads, -1).transpose(1, 2)

    def keys_values(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self._split(self.key(x)), self._split(self.value(x))

    def attend(self, x: Tensor, keys: Tensor, values: Tensor, mask: Tensor | None = None,
               causal: bool = False) -> Tensor:
        """``mask``: ``(B, S)`` bool over keys, True = may be attended."""
        attn_mask = None if mask is None else mask[:, None, None, :]
        out = F.scaled_dot_product_attention(
            self._split(self.query(x)), keys, values, attn_mask=attn_mask,
            dropout_p=self.dropout if self.training else 0.0, is_causal=causal,
        )
        return self.proj(out.transpose(1, 2).reshape(x.shape))


class _FeedForward(nn.Module):
    def __init__(self, d_model: int, ff: int, dropout: float) -> None:
        super().__init__()
        self.inner = nn.Linear(d_model, ff)
        self.outer = nn.Linear(ff, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.outer(self.dropout(F.gelu(self.inner(x))))


class _EncoderLayer(nn.Module):
    def __init__(self, d_model: int, heads: int, ff: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.attn = _Attention(d_model, heads, dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.ff = _FeedForward(d_model, ff, dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        h = self.norm1(x)
        x = x + self.dropout(self.attn.attend(h, *self.attn.keys_values(h), mask=mask))
        return x + self.dropout(self.ff(self.norm2(x)))


class TransformerEncoder(nn.Module):
    """Pre-norm Transformer encoder; ``Memory.states`` is ``(B, S, d_model)``, ``final`` is None.

    Examples:
        >>> enc = TransformerEncoder(30, d_model=16, heads=2, layers=1, ff=32, dropout=0.0, max_len=8)
        >>> src = torch.tensor([[5, 6, 7], [5, 6, 0]])
        >>> tuple(enc(src, src != 0).states.shape)
        (2, 3, 16)
    """

    def __init__(self, vocab_size: int, d_model: int, heads: int, layers: int, ff: int,
                 dropout: float = 0.1, max_len: int = 256) -> None:
        super().__init__()
        dropout = _check_sizes("TransformerEncoder()", vocab_size, d_model, heads, layers, ff,
                               dropout, max_len)
        self.embed = _Embedding(vocab_size, d_model, max_len, dropout)
        self.layers = nn.ModuleList(_EncoderLayer(d_model, heads, ff, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(d_model)

    def forward(self, src: Tensor, src_mask: Tensor) -> Memory:
        check_source(src, src_mask, "TransformerEncoder")
        x = self.embed(src, 0, "TransformerEncoder")
        for layer in self.layers:
            x = layer(x, src_mask)
        return Memory(states=self.norm(x), mask=src_mask)


@dataclass
class TransformerCache:
    """Incremental decoding state of :class:`TransformerDecoder`.

    Attributes:
        position: index of the next position to decode.
        self_keys, self_values: per layer ``(B, heads, position, d_head)``, one position appended
            per step.
        cross_keys, cross_values: per layer ``(B, heads, S, d_head)``, computed once from the memory.
        memory_mask: ``(B, S)`` mask matching the cached cross-attention rows.
    """

    position: int
    self_keys: list[Tensor]
    self_values: list[Tensor]
    cross_keys: list[Tensor]
    cross_values: list[Tensor]
    memory_mask: Tensor


class _DecoderLayer(nn.Module):
    def __init__(self, d_model: int, heads: int, ff: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.self_attn = _Attention(d_model, heads, dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.cross_attn = _Attention(d_model, heads, dropout)
        self.norm3 = nn.LayerNorm(d_model)
        self.ff = _FeedForward(d_model, ff, dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, past: tuple[Tensor, Tensor] | None, cross_kv: tuple[Tensor, Tensor],
                memory_mask: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Without ``past``: causal self-attention over ``x``. With ``past`` (cached keys/values of
        earlier positions): ``x`` holds the next position(s) and attends to past + itself."""
        h = self.norm1(x)
        keys, values = self.self_attn.keys_values(h)
        if past is not None:
            keys, values = torch.cat([past[0], keys], dim=2), torch.cat([past[1], values], dim=2)
        x = x + self.dropout(self.self_attn.attend(h, keys, values, causal=past is None))
        x = x + self.dropout(self.cross_attn.attend(self.norm2(x), *cross_kv, mask=memory_mask))
        return x + self.dropout(self.ff(self.norm3(x))), (keys, values)


class TransformerDecoder(nn.Module):
    """Pre-norm Transformer decoder: causal self-attention, cross-attention, final LayerNorm, ``out``.

    ``forward`` runs all positions at once; ``step`` decodes one position with a
    :class:`TransformerCache` (``initial_state`` is ``None``; the cache is built on the first step).

    Examples:
        >>> enc = TransformerEncoder(30, 16, 2, 1, 32, dropout=0.0, max_len=8)
        >>> dec = TransformerDecoder(40, 16, 2, 1, 32, dropout=0.0, max_len=8)
        >>> mem = enc(torch.tensor([[5, 6]]), torch.tensor([[True, True]]))
        >>> logits, cache = dec.step(torch.tensor([2]), mem, dec.initial_state(mem))
        >>> tuple(logits.shape), cache.position
        ((1, 40), 1)
    """

    def __init__(self, vocab_size: int, d_model: int, heads: int, layers: int, ff: int,
                 dropout: float = 0.1, max_len: int = 256) -> None:
        super().__init__()
        dropout = _check_sizes("TransformerDecoder()", vocab_size, d_model, heads, layers, ff,
                               dropout, max_len)
        self.embed = _Embedding(vocab_size, d_model, max_len, dropout)
        self.layers = nn.ModuleList(_DecoderLayer(d_model, heads, ff, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(d_model)
        self.out = nn.Linear(d_model, vocab_size)

    def initial_state(self, memory: Memory) -> None:
        """``None``: the cache is created by the first :meth:`step`."""
        return None

    def forward(self, prev_tokens: Tensor, memory: Memory, state: None = None) -> Tensor:
        """Teacher-forced logits ``(B, T, V)`` with causal self-attention."""
        if state is not None:
            raise ValueError(
                "TransformerDecoder: forward always starts at position 0 and takes state=None; "
                "continue from a TransformerCache with step()"
            )
        if prev_tokens.dim() != 2:
            raise ValueError(
                f"TransformerDecoder: prev_tokens must be (B, T), got shape {tuple(prev_tokens.shape)}"
            )
        x = self.embed(prev_tokens, 0, "TransformerDecoder")
        for layer in self._decoder_layers():
            x, _ = layer(x, None, layer.cross_attn.keys_values(memory.states), memory.mask)
        return self.out(self.norm(x))

    def _decoder_layers(self) -> list[_DecoderLayer]:
        return [cast(_DecoderLayer, layer) for layer in self.layers]

    def step(self, prev_token: Tensor, memory: Memory, state: TransformerCache | None
             ) -> tuple[Tensor, TransformerCache]:
        """One position: ``prev_token`` ``(B,)`` -> logits ``(B, V)`` and the extended cache."""
        if prev_token.dim() != 1:
            raise ValueError(
                f"TransformerDecoder.step: prev_token must be (B,), got shape {tuple(prev_token.shape)}"
            )
        if state is None:
            cross = [layer.cross_attn.keys_values(memory.states) for layer in self._decoder_layers()]
            state = TransformerCache(0, [], [], [k for k, _ in cross], [v for _, v in cross], memory.mask)
        x = self.embed(prev_token[:, None], state.position, "TransformerDecoder.step")
        keys, values = [], []
        for i, layer in enumerate(self.layers):
            past = (state.self_keys[i], state.self_values[i]) if state.position > 0 else None
            cross_kv = (state.cross_keys[i], state.cross_values[i])
            x, (k, v) = layer(x, past, cross_kv, state.memory_mask)
            keys.append(k)
            values.append(v)
        new_state = TransformerCache(state.position + 1, keys, values, state.cross_keys,
                                     state.cross_values, state.memory_mask)
        return self.out(self.norm(x))[:, 0], new_state

    def reorder_state(self, state: TransformerCache | None, index: Tensor) -> TransformerCache | None:
        """Select batch rows ``index`` of every cached tensor."""
        if state is None:
            return None

        def pick(tensors: list[Tensor]) -> list[Tensor]:
            return [t.index_select(0, index) for t in tensors]

        return TransformerCache(state.position, pick(state.self_keys), pick(state.self_values),
                                pick(state.cross_keys), pick(state.cross_values),
                                state.memory_mask.index_select(0, index))


def transformer_seq2seq(
    src_vocab: int,
    tgt_vocab: int,
    d_model: int = 256,
    heads: int = 4,
    enc_layers: int = 3,
    dec_layers: int = 3,
    ff: int = 1024,
    dropout: float = 0.1,
    max_len: int = 256,
) -> Seq2Seq:
    """A pre-norm Transformer encoder–decoder.

    Examples:
        >>> model = transformer_seq2seq(30, 74, d_model=16, heads=2, enc_layers=1, dec_layers=1, ff=32)
        >>> sorted(dict(model.named_children()))
        ['decoder', 'encoder']
    """
    encoder = TransformerEncoder(src_vocab, d_model, heads, enc_layers, ff, dropout, max_len)
    decoder = TransformerDecoder(tgt_vocab, d_model, heads, dec_layers, ff, dropout, max_len)
    return Seq2Seq(encoder, decoder)
