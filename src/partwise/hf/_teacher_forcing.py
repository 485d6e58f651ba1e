"""Teacher forcing and scheduled sampling for Hugging Face decoders.

The same :class:`~partwise.seq2seq.TeacherForcing` object (schedule, ``per``, ``mode``, ``sample``) that drives
partwise's reference decoders drives an HF model here: a gold decoder input is fed with the schedule's
probability, otherwise the model's own prediction for that position. ``mode="two_pass"`` runs a
no-gradient teacher-forced pass, mixes gold and predicted ``decoder_input_ids`` per token and runs a
second pass with gradient (Mihaylova & Martins 2019); ``mode="exact"`` decodes token by token with the
model's key/value cache. Position 0 (the decoder start token) is always gold, and so is every position
whose gold input is padding.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..seq2seq._teacher_forcing import TeacherForcing, TeacherForcingStats, _uniform

__all__ = ["IGNORE", "decoder_logits", "shift_right"]

IGNORE = -100  # label value HF losses ignore (padding)


def shift_right(labels: Tensor, decoder_start_token_id: int, pad_token_id: int) -> Tensor:
    """Decoder inputs for ``labels``: the start token, then the labels shifted one to the right, with
    ignored positions (-100) replaced by the pad id — what HF's ``shift_tokens_right`` does.

    Examples:
        >>> shift_right(torch.tensor([[5, 6, -100]]), decoder_start_token_id=1, pad_token_id=0).tolist()
        [[1, 5, 6]]
    """
    out = labels.new_empty(labels.shape)
    out[:, 0] = decoder_start_token_id
    out[:, 1:] = labels[:, :-1]
    return out.masked_fill(out == IGNORE, pad_token_id)


def _forward(model: nn.Module, encoding: Any, decoder_input_ids: Tensor, **kw: Any) -> Any:
    return model(encoder_outputs=encoding.outputs(), attention_mask=encoding.mask,
                 decoder_input_ids=decoder_input_ids, **kw)


def _gold_mask(labels: Tensor, p: float, per: str, generator: torch.Generator | None) -> Tensor:
    """``(B, T)`` bool, True where the gold decoder input is fed (position 0 and padding always)."""
    fixed = torch.zeros(labels.shape, dtype=torch.bool, device=labels.device)
    fixed[:, 0] = True
    fixed[:, 1:] = labels[:, :-1] == IGNORE
    if p >= 1.0:
        return torch.ones_like(fixed)
    if p <= 0.0:
        return fixed
    shape = (1, 1) if per == "sequence" else tuple(labels.shape)
    return fixed | (_uniform(shape, generator, labels.device) < p)


def decoder_logits(model: nn.Module, encoding: Any, decoder_input_ids: Tensor, labels: Tensor,
                   tf: TeacherForcing | None, step: int, generator: torch.Generator | None = None) -> Tensor:
    """Logits ``(B, T, V)`` for every decoder position, teacher-forced or with scheduled sampling.

    ``encoding`` is the task's encoder output (``outputs()`` for ``encoder_outputs=``, ``mask``);
    ``tf=None`` means plain teacher forcing (one parallel decoder call).
    """
    if tf is None:
        logits: Tensor = _forward(model, encoding, decoder_input_ids, use_cache=False).logits
        return logits
    p = tf.ratio(step)
    gold = _gold_mask(labels, p, tf.per, generator)
    real = labels[:, :-1] != IGNORE
    choices, fed = int(real.sum()), int((gold[:, 1:] & real).sum())
    all_gold = bool(gold.all())
    tf.last_stats = TeacherForcingStats(step=int(step), ratio=p, gold_fraction=fed / choices if choices else 1.0,
                                        parallel=all_gold or tf.mode == "two_pass")
    if all_gold:
        all_gold_logits: Tensor = _forward(model, encoding, decoder_input_ids, use_cache=False).logits
        return all_gold_logits
    if tf.mode == "two_pass":
        with torch.no_grad():
            first = _forward(model, encoding, decoder_input_ids, use_cache=False).logits
        predicted = tf._choose(first[:, :-1], generator)  # input t is the prediction made at t-1
        mixed = torch.cat([decoder_input_ids[:, :1],
                           torch.where(gold[:, 1:], decoder_input_ids[:, 1:], predicted)], dim=1)
        mixed_logits: Tensor = _forward(model, encoding, mixed, use_cache=False).logits
        return mixed_logits
    return _stepwise(model, encoding, decoder_input_ids, gold, tf, generator)


def _stepwise(model: nn.Module, encoding: Any, decoder_input_ids: Tensor, gold: Tensor, tf: TeacherForcing,
              generator: torch.Generator | None) -> Tensor:
    """Token by token with the key/value cache: a non-gold input is this run's own previous prediction."""
    past, token, outputs = None, decoder_input_ids[:, :1], []
    for t in range(decoder_input_ids.shape[1]):
        out = _forward(model, encoding, token, past_key_values=past, use_cache=True)
        logits, past = out.logits[:, -1], out.past_key_values
        outputs.append(logits)
        if t + 1 < decoder_input_ids.shape[1]:
            nxt = torch.where(gold[:, t + 1], decoder_input_ids[:, t + 1], tf._choose(logits, generator))
            token = nxt[:, None]
    return torch.stack(outputs, dim=1)
