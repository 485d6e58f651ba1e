"""GRU encoder and decoder (optionally with attention) following the seq2seq protocol.

The decoder attends *after* its RNN (Luong et al. 2015, "Effective Approaches to Attention-based
Neural Machine Translation", section 3): ``h_t = GRU(y_{t-1}, h_{t-1})``, a context vector from
``h_t`` over the encoder states, then ``tanh(W_c [h_t; c_t])`` feeds the output layer. Because the
recurrence does not depend on the context, the teacher-forced ``forward`` is a single ``nn.GRU`` call
over the whole target followed by batched attention — no Python loop over positions.
"""

from __future__ import annotations

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

    Example:
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
    ) -> None:
        super().__init__()
        where = "GRUEncoder()"
        for name, value in (("vocab_size", vocab_size), ("emb_dim", emb_dim), ("hidden", hidden),
                            ("layers", layers)):
            check_positive_int(value, name, where)
        dropout = check_dropout(dropout, where)
        dec_hidden = hidden if dec_hidden is None else check_positive_int(dec_hidden, "dec_hidden", where)
        self.layers = layers
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
        return Memory(states=states, mask=src_mask, final=final)


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
    ``logits = out(dropout(tanh(combine([h_t; context_t]))))``. Padding in the memory is masked
    out of attention. The state is the GRU hidden ``(layers, B, hidden)``; ``initial_state`` takes
    ``Memory.final`` (zeros when it is ``None``).

    Args:
        vocab_size: target vocabulary size (``PAD, UNK, BOS, EOS = 0, 1, 2, 3``).
        emb_dim: embedding size.
        hidden: GRU hidden size.
        layers: stacked GRU layers.
        attention: ``None``, ``"additive"`` (Bahdanau score) or ``"dot"`` (Luong dot/general).
        memory_dim: size of ``Memory.states``' last dimension; defaults to ``hidden``.
        dropout: on embeddings, between GRU layers and before ``out``.

    Example:
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
        self.layers = layers
        self.hidden = hidden
        self.memory_dim = memory_dim
        self.embed = nn.Embedding(vocab_size, emb_dim, padding_idx=PAD)
        self.rnn = nn.GRU(emb_dim, hidden, layers, batch_first=True,
                          dropout=dropout if layers > 1 else 0.0)
        self.dropout = nn.Dropout(dropout)
        self.attention: nn.Module | None = None
        self.combine: nn.Linear | None = None
        if attention is not None:
            kind = _AdditiveAttention if attention == "additive" else _DotAttention
            self.attention = kind(hidden, memory_dim)
            self.combine = nn.Linear(hidden + memory_dim, hidden)
        self.out = nn.Linear(hidden, vocab_size)

    def initial_state(self, memory: Memory) -> Tensor:
        """``Memory.final`` checked against ``(layers, B, hidden)``, or zeros when it is ``None``."""
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

    def forward(self, prev_tokens: Tensor, memory: Memory, state: Tensor | None = None) -> Tensor:
        """Teacher-forced logits ``(B, T, V)``; ``state`` defaults to ``initial_state(memory)``."""
        if prev_tokens.dim() != 2:
            raise ValueError(
                f"GRUDecoder: prev_tokens must be (B, T), got shape {tuple(prev_tokens.shape)}; "
                "use step() for one position"
            )
        h0 = self.initial_state(memory) if state is None else state
        outputs, _ = self.rnn(self.dropout(self.embed(prev_tokens)), h0)
        return self._head(outputs, memory)

    def step(self, prev_token: Tensor, memory: Memory, state: Tensor) -> tuple[Tensor, Tensor]:
        """One position: ``prev_token`` ``(B,)`` -> logits ``(B, V)`` and the next hidden state."""
        if prev_token.dim() != 1:
            raise ValueError(
                f"GRUDecoder.step: prev_token must be (B,), got shape {tuple(prev_token.shape)}"
            )
        output, state = self.rnn(self.dropout(self.embed(prev_token[:, None])), state)
        return self._head(output, memory)[:, 0], state

    def reorder_state(self, state: Tensor, index: Tensor) -> Tensor:
        """Select batch rows ``index`` of the hidden state."""
        return state.index_select(1, index)

    def _head(self, outputs: Tensor, memory: Memory) -> Tensor:
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
        return self.out(self.dropout(features))


def gru_seq2seq(
    src_vocab: int,
    tgt_vocab: int,
    emb: int = 128,
    hidden: int = 256,
    layers: int = 1,
    bidirectional: bool = True,
    attention: str | None = "additive",
    dropout: float = 0.1,
) -> Seq2Seq:
    """A GRU encoder–decoder: ``GRUEncoder`` + ``GRUDecoder`` sized to fit each other.

    The encoder has ``hidden`` units per direction; the decoder has ``hidden`` units and attends
    over ``hidden * directions``-sized encoder states.

    Example:
        >>> model = gru_seq2seq(30, 74, emb=16, hidden=32)
        >>> type(model.decoder.out).__name__
        'Linear'
    """
    encoder = GRUEncoder(src_vocab, emb, hidden, layers, bidirectional, dropout, dec_hidden=hidden)
    decoder = GRUDecoder(tgt_vocab, emb, hidden, layers, attention, encoder.output_dim, dropout)
    return Seq2Seq(encoder, decoder)
