"""Batched greedy decoding and beam search for models following the seq2seq protocol.

Both functions take any ``model`` with ``model.encode(src, src_mask) -> Memory`` and a
``model.decoder`` implementing ``initial_state`` / ``step`` / ``reorder_state``. They run under
``torch.inference_mode()`` and leave the model's train/eval mode alone: call ``model.eval()`` first.

``max_len`` bounds the number of decoding steps per row (the ``EOS`` step included), so a result has
at most ``max_len`` tokens. It is an int, or a function of the source lengths: it is called once
with the ``(B,)`` long tensor of source lengths and must return an int or a ``(B,)`` tensor, e.g.
``lambda n: 2 * n + 5``.

``PAD`` and ``BOS`` are never emitted: their logits are masked at every step (they would otherwise
be dropped from the output, hiding an error).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, cast

import torch
from torch import Tensor

from partwise.seq2seq._protocol import BOS, EOS, PAD, Memory

__all__ = ["greedy_decode", "beam_search", "MaxLen"]

MaxLen = int | Callable[[Tensor], "int | Tensor"]


class _EncoderDecoder(Protocol):
    encoder: Any
    decoder: Any

    def encode(self, src: Tensor, src_mask: Tensor) -> Memory: ...


def encoder_decoder(model: Any) -> _EncoderDecoder:
    """``model`` seen as a seq2seq model (``encoder``, ``decoder``, ``encode(src, src_mask)``)."""
    return cast(_EncoderDecoder, model)


def _limits(max_len: MaxLen, src_mask: Tensor, where: str) -> Tensor:
    """Per-row step limits ``(B,)`` from an int or a function of the source lengths."""
    lengths = src_mask.sum(dim=1)
    value: Any = max_len(lengths) if callable(max_len) else max_len
    if isinstance(value, bool) or not isinstance(value, int | Tensor):
        raise TypeError(
            f"{where}: max_len must be an int or return an int or a (B,) tensor, got "
            f"{type(value).__name__}"
        )
    limits = torch.as_tensor(value, device=src_mask.device).long().expand(lengths.shape)
    if limits.numel() and int(limits.min()) < 1:
        raise ValueError(f"{where}: max_len gave {int(limits.min())} for some row; it must be >= 1")
    return limits


def _emittable(logits: Tensor) -> Tensor:
    """``logits`` with ``PAD`` and ``BOS`` made impossible."""
    return logits.index_fill(-1, torch.tensor([PAD, BOS], device=logits.device), float("-inf"))


def _strip(tokens: Tensor, lengths: Tensor) -> list[list[int]]:
    rows = tokens.tolist()
    return [row[:n] for row, n in zip(rows, lengths.tolist(), strict=True)]


@torch.inference_mode()
def greedy_decode(model: _EncoderDecoder, src: Tensor, src_mask: Tensor, max_len: MaxLen = 100
                  ) -> list[list[int]]:
    """Pick the most likely token at every step, for the whole batch at once.

    Each row stops at its first ``EOS`` (not included in the result) or after its ``max_len`` steps;
    the loop ends as soon as every row has stopped.

    Args:
        model: has ``encode(src, src_mask)`` and a protocol ``decoder``.
        src: ``(B, S)`` source token ids.
        src_mask: ``(B, S)`` bool, True at real tokens.
        max_len: step limit, an int or a function of the source lengths (see module docs).

    Returns:
        One list of token ids per row, without ``BOS``/``EOS``.

    Examples:
        >>> from partwise.seq2seq import gru_seq2seq
        >>> model = gru_seq2seq(10, 12, emb=8, hidden=8).eval()
        >>> src = torch.tensor([[4, 5, 6]])
        >>> out = greedy_decode(model, src, src != 0, max_len=5)
        >>> len(out), len(out[0]) <= 5
        (1, True)
    """
    limits = _limits(max_len, src_mask, "greedy_decode()")
    memory = model.encode(src, src_mask)
    decoder = model.decoder
    state = decoder.initial_state(memory)
    batch, steps = src.shape[0], int(limits.max()) if src.shape[0] else 0
    if not steps:
        return [[] for _ in range(batch)]
    rows = torch.arange(batch, device=src.device)  # the batch row of each row still decoding
    token = torch.full((batch,), BOS, dtype=torch.long, device=src.device)
    tokens = torch.full((batch, steps), PAD, dtype=torch.long, device=src.device)
    lengths = limits.clone()  # tokens kept per row; lowered when a row emits EOS
    for t in range(steps):
        logits, state = decoder.step(token, memory, state)
        token = _emittable(logits).argmax(dim=-1)  # PAD and BOS are never emitted
        tokens[rows, t] = token
        ended = token == EOS
        lengths[rows[ended]] = t
        done = ended | (limits[rows] <= t + 1)
        if bool(done.all()):
            break
        if bool(done.any()):  # finished rows leave the batch: later steps compute only the others
            keep = (~done).nonzero().squeeze(1)
            rows, token = rows[keep], token[keep]
            memory, state = memory.index_select(keep), decoder.reorder_state(state, keep)
    return _strip(tokens, lengths)


@torch.inference_mode()
def beam_search(model: _EncoderDecoder, src: Tensor, src_mask: Tensor, beam_size: int = 5,
                max_len: MaxLen = 100, length_penalty: float = 1.0) -> list[list[int]]:
    """Beam search over ``beam_size`` hypotheses per row, all rows batched together.

    A hypothesis ``y`` (``EOS`` included when it has one) is ranked by
    ``score(y) = sum_t log p(y_t | y_<t, x) / len(y) ** length_penalty``; ``length_penalty=0`` ranks
    by total log-probability, larger values favour longer outputs. At every step the ``2 * beam_size``
    best extensions are taken; those ending in ``EOS`` and ranked within the first ``beam_size`` are
    set aside as finished (the best ``beam_size`` finished per row are kept), the best
    ``beam_size`` others continue. A row stops when it holds ``beam_size`` finished hypotheses and
    the best of them scores at least as well as every live one, scored at its current length (the
    rule of Hugging Face's ``early_stopping=False``; with ``length_penalty > 0`` a live hypothesis
    could in principle still overtake later), or when it reaches ``max_len`` steps, where live
    hypotheses count as finished without ``EOS``. ``beam_size=1`` gives exactly greedy decoding.

    Args:
        model: has ``encode(src, src_mask)`` and a protocol ``decoder``.
        src: ``(B, S)`` source token ids.
        src_mask: ``(B, S)`` bool, True at real tokens.
        beam_size: hypotheses kept per row.
        max_len: step limit, an int or a function of the source lengths (see module docs).
        length_penalty: exponent of the length normalisation above.

    Returns:
        The best hypothesis per row, as token ids without ``BOS``/``EOS``.

    Examples:
        >>> from partwise.seq2seq import gru_seq2seq
        >>> model = gru_seq2seq(10, 12, emb=8, hidden=8).eval()
        >>> src = torch.tensor([[4, 5, 6], [7, 8, 0]])
        >>> len(beam_search(model, src, src != 0, beam_size=3, max_len=6))
        2
    """
    if isinstance(beam_size, bool) or not isinstance(beam_size, int) or beam_size < 1:
        raise ValueError(f"beam_search(): beam_size={beam_size!r} must be an int >= 1")
    if isinstance(length_penalty, bool) or not isinstance(length_penalty, int | float):
        raise TypeError(f"beam_search(): length_penalty={length_penalty!r} must be a float")
    limits = _limits(max_len, src_mask, "beam_search()")
    batch, k, device = src.shape[0], beam_size, src.device
    if batch == 0:
        return []
    rows = torch.arange(batch, device=device)
    memory = model.encode(src, src_mask).index_select(rows.repeat_interleave(k))
    decoder = model.decoder
    state = decoder.initial_state(memory)
    steps = int(limits.max())
    neg_inf = float("-inf")

    # Live beams: summed log-probs (only beam 0 is live at the start) and their tokens so far.
    scores = torch.full((batch, k), neg_inf, device=device)
    scores[:, 0] = 0.0
    history = torch.full((batch, k, steps), PAD, dtype=torch.long, device=device)
    # Finished pool, best first: normalised scores, tokens without EOS, and their lengths.
    pool_scores = torch.full((batch, k), neg_inf, device=device)
    pool_tokens = torch.full((batch, k, steps), PAD, dtype=torch.long, device=device)
    pool_lengths = torch.zeros((batch, k), dtype=torch.long, device=device)
    active = torch.ones(batch, dtype=torch.bool, device=device)
    token = torch.full((batch * k,), BOS, dtype=torch.long, device=device)

    def add_to_pool(new_scores: Tensor, new_tokens: Tensor, new_length: int) -> None:
        nonlocal pool_scores, pool_tokens, pool_lengths
        all_scores = torch.cat([pool_scores, new_scores], dim=1)
        pool_scores, best = all_scores.topk(k, dim=1)
        all_tokens = torch.cat([pool_tokens, new_tokens], dim=1)
        pool_tokens = all_tokens.gather(1, best[:, :, None].expand(-1, -1, steps))
        new_lengths = torch.full_like(new_scores, new_length, dtype=torch.long)
        pool_lengths = torch.cat([pool_lengths, new_lengths], dim=1).gather(1, best)

    for t in range(steps):
        logits, state = decoder.step(token, memory, state)
        log_probs = _emittable(torch.log_softmax(logits.float(), dim=-1)).view(batch, k, -1)
        vocab = log_probs.shape[-1]
        totals = (scores[:, :, None] + log_probs).view(batch, -1)
        cand_scores, cand = totals.topk(min(2 * k, totals.shape[1]), dim=1)
        cand_beam, cand_token = cand // vocab, cand % vocab
        cand_history = history.gather(1, cand_beam[:, :, None].expand(-1, -1, steps))
        norm = float(t + 1) ** length_penalty

        # Finished: EOS among the first k candidates of rows still searching.
        is_eos = cand_token == EOS
        rank = torch.arange(cand.shape[1], device=device)
        accept = is_eos & (rank < k) & active[:, None]
        add_to_pool(torch.where(accept, cand_scores / norm, neg_inf), cand_history, t)

        # Live: the k best candidates not ending in EOS (there are always k of them: a beam
        # contributes at most one EOS candidate, so at most k of the 2k candidates are EOS).
        keep = (is_eos.long() * cand.shape[1] + rank).argsort(dim=1)[:, :k]
        beam = cand_beam.gather(1, keep)
        scores = cand_scores.gather(1, keep)
        history = cand_history.gather(1, keep[:, :, None].expand(-1, -1, steps))
        token = cand_token.gather(1, keep)
        history[:, :, t] = token
        token = token.view(-1)
        state = decoder.reorder_state(state, (rows[:, None] * k + beam).view(-1))

        # Rows at their step limit: live hypotheses are final as they stand (no EOS).
        at_limit = active & (limits <= t + 1)
        add_to_pool(torch.where(at_limit[:, None], scores / norm, neg_inf), history, t + 1)
        full = pool_scores[:, -1] > neg_inf
        settled = full & (pool_scores[:, 0] >= scores.max(dim=1).values / norm)
        active &= ~(at_limit | settled)
        if not bool(active.any()):
            break
    return _strip(pool_tokens[:, 0], pool_lengths[:, 0])
