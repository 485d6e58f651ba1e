"""GRU encoder and decoder (optionally with attention) following the seq2seq protocol.

The decoder attends *after* its RNN (Luong et al. 2015, "Effective Approaches to Attention-based
Neural Machine Translation", section 3): ``h_t = GRU(y_{t-1}, h_{t-1})``, a context vector from
``h_t`` over the encoder states, then ``tanh(W_c [h_t; c_t])`` feeds the output layer. Because the
recurrence does not depend on the context, the teacher-forced ``forward`` is a single ``nn.GRU`` call
over the whole target followed by batched attention — no Python loop over positions.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from partwise.seq2seq._model import Seq2Seq, check_dropout, check_positive_int, check_source
from partwise.seq2seq._protocol import PAD, Memory

__all__ = ["GRUEncoder", "GRUDecoder", "gru_seq2seq", "ATTENTION_KINDS"]

ATTENTION_KINDS = ("additive", "dot")


class GRUEncoder(nn.Module):
    """Embedding + (bi)GRU over packed sequences, so padding never changes the result.

    ``Memory.states`` is ``(B, S, hidden * directions)`` (zeros at padding); ``Memory.final`` is the
    decoder's initial hidden state ``(layers, B, dec_hidden)``. A unidirectional encoder with
    ``dec_hidden == hidden`` hands over its last hidden state as is (no extra parameters, so a plain
    pretrained GRU encoder–decoder such as g2p-en loads 1:1); otherwise the per-layer
    concatenation of the final states goes through ``bridge`` (Linear + tanh).

    Args:
        vocab_size: source vocabulary size (``PAD = 0``).
        emb_dim: embedding size.
        hidden: GRU hidden size per direction.
        layers: stacked GRU layers.
        bidirectional: run a backward GRU as well.
        dropout: on embeddings and between GRU layers.
        dec_hidden: size of ``Memory.final`` (the decoder's hidden size); defaults to ``hidden``.
        dec_layers: layers of ``Memory.final`` (the decoder's); the top ``dec_layers`` of the encoder's
            ``layers`` hand over their final states. Defaults to ``layers``.

    Examples:
        >>> enc = GRUEncoder(30, 8, 16, bidirectional=True)
        >>> src = torch.tensor([[5, 6, 7], [5, 6, 0]])
        >>> mem = enc(src, src != 0)
        >>> tuple(mem.states.shape), tuple(mem.final.shape)
        ((2, 3, 32), (1, 2, 16))
    """

    def __init__(
        self,
        vocab_size: int,
        emb_dim: int,
        hidden: int,
        layers: int = 1,
        bidirectional: bool = False,
        dropout: float = 0.0,
        dec_hidden: int | None = None,
        dec_layers: int | None = None,
    ) -> None:
        super().__init__()
        where = "GRUEncoder()"
        for name, value in (("vocab_size", vocab_size), ("emb_dim", emb_dim), ("hidden", hidden),
                            ("layers", layers)):
            check_positive_int(value, name, where)
        dropout = check_dropout(dropout, where)
        dec_hidden = hidden if dec_hidden is None else check_positive_int(dec_hidden, "dec_hidden", where)
        dec_layers = layers if dec_layers is None else check_positive_int(dec_layers, "dec_layers", where)
        if dec_layers > layers:
            raise ValueError(f"{where}: dec_layers={dec_layers} is more than the encoder's layers={layers}; "
                             "give the encoder at least as many layers as the decoder")
        self.layers, self.dec_layers = layers, dec_layers
        self.directions = 2 if bidirectional else 1
        self.embed = nn.Embedding(vocab_size, emb_dim, padding_idx=PAD)
        self.dropout = nn.Dropout(dropout)
        self.rnn = nn.GRU(emb_dim, hidden, layers, batch_first=True, bidirectional=bidirectional,
                          dropout=dropout if layers > 1 else 0.0)
        needs_bridge = bidirectional or dec_hidden != hidden
        self.bridge = nn.Linear(self.directions * hidden, dec_hidden) if needs_bridge else None

    @property
    def output_dim(self) -> int:
        """Size of ``Memory.states``' last dimension (the decoder's ``memory_dim``)."""
        return self.rnn.hidden_size * self.directions

    def forward(self, src: Tensor, src_mask: Tensor) -> Memory:
        lengths = check_source(src, src_mask, "GRUEncoder")
        positions = torch.arange(src.shape[1], device=src.device)
        if not torch.equal(src_mask, positions < lengths[:, None]):
            raise ValueError(
                "GRUEncoder: src_mask must be right-padded (each row's True entries first, then "
                "False); move padding to the end of each row"
            )
        x = self.dropout(self.embed(src))
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, h_n = self.rnn(packed)
        states, _ = pad_packed_sequence(out, batch_first=True, total_length=src.shape[1])
        if self.bridge is None:
            final = h_n
        else:  # (layers * dirs, B, H) -> (layers, B, dirs * H) -> (layers, B, dec_hidden)
            batch = h_n.shape[1]
            h = h_n.view(self.layers, self.directions, batch, -1).permute(0, 2, 1, 3)
            final = torch.tanh(self.bridge(h.reshape(self.layers, batch, -1)))
        return Memory(states=states, mask=src_mask, final=final[self.layers - self.dec_layers:])


class _AdditiveAttention(nn.Module):
    """Score ``v^T tanh(W h + U m)`` (Bahdanau et al. 2015)."""

    def __init__(self, query_dim: int, memory_dim: int) -> None:
        super().__init__()
        self.query = nn.Linear(query_dim, query_dim, bias=False)
        self.key = nn.Linear(memory_dim, query_dim)
        self.score = nn.Linear(query_dim, 1, bias=False)

    def forward(self, query: Tensor, states: Tensor) -> Tensor:
        hidden = self.query(query).unsqueeze(2) + self.key(states).unsqueeze(1)  # (B, T, S, A)
        return self.score(torch.tanh(hidden)).squeeze(-1)


class _DotAttention(nn.Module):
    """Score ``h^T m`` (Luong "dot"), or ``h^T W m`` ("general") when the sizes differ."""

    def __init__(self, query_dim: int, memory_dim: int) -> None:
        super().__init__()
        self.key = nn.Linear(memory_dim, query_dim, bias=False) if memory_dim != query_dim else None

    def forward(self, query: Tensor, states: Tensor) -> Tensor:
        keys = states if self.key is None else self.key(states)
        return torch.bmm(query, keys.transpose(1, 2))


class GRUDecoder(nn.Module):
    """GRU decoder with optional Luong-style attention after the RNN.

    Without attention ``logits = out(dropout(h_t))``; with it
    ``logits = out(dropout(a_t))``, ``a_t = tanh(combine([h_t; context_t]))``. Padding in the memory
    is masked out of attention. The state is the GRU hidden ``(layers, B, hidden)``; ``initial_state``
    takes ``Memory.final`` (zeros when it is ``None``).

    With ``input_feeding`` (Luong et al. 2015, section 3.3) the RNN also reads the previous
    attentional vector, ``h_t = GRU([y_{t-1}; a_{t-1}], h_{t-1})``, so it knows what it attended to
    last; the state is then ``(hidden, a_{t-1})`` and the teacher-forced ``forward`` runs one
    position at a time (slower per step, usually fewer errors on monotonic tasks such as G2P).

    Args:
        vocab_size: target vocabulary size (``PAD, UNK, BOS, EOS = 0, 1, 2, 3``).
        emb_dim: embedding size.
        hidden: GRU hidden size.
        layers: stacked GRU layers.
        attention: ``None``, ``"additive"`` (Bahdanau score) or ``"dot"`` (Luong dot/general).
        memory_dim: size of ``Memory.states``' last dimension; defaults to ``hidden``.
        dropout: on embeddings, between GRU layers and before ``out``.
        input_feeding: feed ``a_{t-1}`` to the RNN (needs ``attention``).

    Examples:
        >>> dec = GRUDecoder(40, 8, 16, attention="dot")
        >>> mem = GRUEncoder(30, 8, 16)(torch.tensor([[5, 6]]), torch.tensor([[True, True]]))
        >>> dec(torch.tensor([[2, 7, 8]]), mem).shape
        torch.Size([1, 3, 40])
    """

    def __init__(
        self,
        vocab_size: int,
        emb_dim: int,
        hidden: int,
        layers: int = 1,
        attention: str | None = None,
        memory_dim: int | None = None,
        dropout: float = 0.0,
        input_feeding: bool = False,
    ) -> None:
        super().__init__()
        where = "GRUDecoder()"
        for name, value in (("vocab_size", vocab_size), ("emb_dim", emb_dim), ("hidden", hidden),
                            ("layers", layers)):
            check_positive_int(value, name, where)
        dropout = check_dropout(dropout, where)
        memory_dim = hidden if memory_dim is None else check_positive_int(memory_dim, "memory_dim", where)
        if attention is not None and attention not in ATTENTION_KINDS:
            raise ValueError(
                f"{where}: attention={attention!r} is unknown; use None, "
                + " or ".join(repr(k) for k in ATTENTION_KINDS)
            )
        if input_feeding and attention is None:
            raise ValueError(f"{where}: input_feeding=True feeds the attentional vector back; give an attention")
        self.layers = layers
        self.hidden = hidden
        self.memory_dim = memory_dim
        self.input_feeding = bool(input_feeding)
        self.embed = nn.Embedding(vocab_size, emb_dim, padding_idx=PAD)
        self.rnn = nn.GRU(emb_dim + (hidden if input_feeding else 0), hidden, layers, batch_first=True,
                          dropout=dropout if layers > 1 else 0.0)
        self.dropout = nn.Dropout(dropout)
        self.attention: nn.Module | None = None
        self.combine: nn.Linear | None = None
        if attention is not None:
            kind = _AdditiveAttention if attention == "additive" else _DotAttention
            self.attention = kind(hidden, memory_dim)
            self.combine = nn.Linear(hidden + memory_dim, hidden)
        self.out = nn.Linear(hidden, vocab_size)

    def initial_state(self, memory: Memory) -> Tensor | tuple[Tensor, Tensor]:
        """``Memory.final`` checked against ``(layers, B, hidden)``, or zeros when it is ``None``; with
        ``input_feeding``, paired with a zero attentional vector ``(B, hidden)``."""
        hidden = self._initial_hidden(memory)
        return (hidden, hidden.new_zeros(hidden.shape[1:])) if self.input_feeding else hidden

    def _initial_hidden(self, memory: Memory) -> Tensor:
        batch = memory.batch_size
        expected = (self.layers, batch, self.hidden)
        if memory.final is None:
            return memory.states.new_zeros(expected)
        if tuple(memory.final.shape) != expected:
            raise ValueError(
                f"GRUDecoder: Memory.final has shape {tuple(memory.final.shape)}, expected "
                f"(layers, B, hidden) = {expected}; give the encoder dec_hidden={self.hidden} and "
                f"layers={self.layers}"
            )
        return memory.final

    def forward(self, prev_tokens: Tensor, memory: Memory, state: Any = None) -> Tensor:
        """Teacher-forced logits ``(B, T, V)``; ``state`` defaults to ``initial_state(memory)``."""
        if prev_tokens.dim() != 2:
            raise ValueError(
                f"GRUDecoder: prev_tokens must be (B, T), got shape {tuple(prev_tokens.shape)}; "
                "use step() for one position"
            )
        state = self.initial_state(memory) if state is None else state
        embedded = self.dropout(self.embed(prev_tokens))
        if not self.input_feeding:
            outputs, _ = self.rnn(embedded, state)
            return self.out(self.dropout(self._features(outputs, memory)))
        hidden, feed = state
        features = []
        for t in range(prev_tokens.shape[1]):  # a_{t-1} enters step t: one position at a time
            output, hidden = self.rnn(torch.cat([embedded[:, t], feed], dim=-1)[:, None], hidden)
            feed = self._features(output, memory)[:, 0]
            features.append(feed)
        return self.out(self.dropout(torch.stack(features, dim=1)))

    def step(self, prev_token: Tensor, memory: Memory, state: Any) -> tuple[Tensor, Any]:
        """One position: ``prev_token`` ``(B,)`` -> logits ``(B, V)`` and the next state."""
        if prev_token.dim() != 1:
            raise ValueError(
                f"GRUDecoder.step: prev_token must be (B,), got shape {tuple(prev_token.shape)}"
            )
        embedded = self.dropout(self.embed(prev_token))
        if not self.input_feeding:
            output, state = self.rnn(embedded[:, None], state)
            return self.out(self.dropout(self._features(output, memory)))[:, 0], state
        hidden, feed = state
        output, hidden = self.rnn(torch.cat([embedded, feed], dim=-1)[:, None], hidden)
        feed = self._features(output, memory)[:, 0]
        return self.out(self.dropout(feed)), (hidden, feed)

    def reorder_state(self, state: Any, index: Tensor) -> Any:
        """Select batch rows ``index`` of the state."""
        if self.input_feeding:
            hidden, feed = state
            return hidden.index_select(1, index), feed.index_select(0, index)
        return state.index_select(1, index)

    def _features(self, outputs: Tensor, memory: Memory) -> Tensor:
        """``a_t`` from the RNN outputs ``(B, T, hidden)``: the attentional vector, or ``h_t`` itself."""
        features = outputs
        if self.attention is not None and self.combine is not None:
            states = memory.states
            if states.shape[-1] != self.memory_dim:
                raise ValueError(
                    f"GRUDecoder: Memory.states has size {states.shape[-1]}, the decoder was built with "
                    f"memory_dim={self.memory_dim}; pass memory_dim={states.shape[-1]}"
                )
            scores = self.attention(outputs, states)  # (B, T, S)
            scores = scores.masked_fill(~memory.mask[:, None, :], float("-inf"))
            context = torch.bmm(torch.softmax(scores, dim=-1), states)
            features = torch.tanh(self.combine(torch.cat([outputs, context], dim=-1)))
        return features


def gru_seq2seq(
    src_vocab: int,
    tgt_vocab: int,
    emb: int = 128,
    hidden: int = 256,
    layers: int = 1,
    bidirectional: bool = True,
    attention: str | None = "additive",
    dropout: float = 0.1,
    enc_layers: int | None = None,
    input_feeding: bool = False,
) -> Seq2Seq:
    """A GRU encoder–decoder: ``GRUEncoder`` + ``GRUDecoder`` sized to fit each other.

    The encoder has ``hidden`` units per direction and ``enc_layers`` layers (default: ``layers``,
    the decoder's); the decoder has ``hidden`` units and attends over ``hidden * directions``-sized
    encoder states. ``input_feeding``: see :class:`GRUDecoder`.

    Examples:
        >>> model = gru_seq2seq(30, 74, emb=16, hidden=32)
        >>> type(model.decoder.out).__name__
        'Linear'
    """
    encoder = GRUEncoder(src_vocab, emb, hidden, layers if enc_layers is None else enc_layers, bidirectional, dropout,
                         dec_hidden=hidden, dec_layers=layers)
    decoder = GRUDecoder(tgt_vocab, emb, hidden, layers, attention, encoder.output_dim, dropout, input_feeding)
    return Seq2Seq(encoder, decoder)
