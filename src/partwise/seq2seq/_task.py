"""The seq2seq task: teacher-forced cross-entropy for training, decoding and WER/PER for evaluation."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from .._task import StepContext
from ._decoding import beam_search, greedy_decode
from ._protocol import PAD, Memory

__all__ = ["Seq2SeqTask"]


class Seq2SeqTask:
    """Cross-entropy on the decoder's outputs, with teacher forcing or scheduled sampling.

    Args:
        teacher_forcing: a :class:`~partwise.TeacherForcing`; a plan phase's own overrides it.
            ``None``: plain teacher forcing (one parallel decoder call).
        label_smoothing: passed to ``cross_entropy``.
        tgt_vocab: needed to score predictions as tokens (WER/PER) in :meth:`evaluate`.
        beam_size: 1 = greedy decoding in evaluation, else beam search.
        max_len: decoding limit: ``src_len * max_len_ratio + 5`` by default.

    Batches are :class:`partwise.data.Batch` (``src``, ``src_mask``, ``tgt_in``, ``tgt_out``, ``index``).
    """

    def __init__(self, teacher_forcing: Any = None, label_smoothing: float = 0.0, tgt_vocab: Any = None,
                 beam_size: int = 1, max_len_ratio: float = 2.0):
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing={label_smoothing!r} must be in [0, 1)")
        if beam_size < 1:
            raise ValueError(f"beam_size={beam_size!r} must be >= 1")
        self.teacher_forcing, self.label_smoothing = teacher_forcing, label_smoothing
        self.tgt_vocab, self.beam_size, self.max_len_ratio = tgt_vocab, beam_size, max_len_ratio

    @property
    def metrics(self) -> tuple[str, ...]:
        """What :meth:`evaluate` returns (WER and PER need ``tgt_vocab`` and references in the dataset)."""
        return ("loss", "token_acc", "wer", "per") if self.tgt_vocab is not None else ("loss", "token_acc")

    def logits(self, model: nn.Module, batch: Any, ctx: StepContext | None = None, memory: Memory | None = None) -> Tensor:
        if memory is None:
            memory = model.encode(batch.src, batch.src_mask)
        tf = (ctx.teacher_forcing if ctx is not None else None) or self.teacher_forcing
        if tf is None:
            return model.decoder(batch.tgt_in, memory, model.decoder.initial_state(memory))
        return tf(model.decoder, memory, batch.tgt_in, step=ctx.step if ctx is not None else 0)

    def loss(self, model: nn.Module, batch: Any, ctx: StepContext) -> Tensor:
        return self.loss_from_encoding(model, batch, None, ctx)

    # -- frozen-encoder cache protocol (see partwise._cache) ------------------------------------
    def encoder_of(self, model: nn.Module) -> nn.Module:
        return model.encoder

    def encode(self, model: nn.Module, batch: Any) -> Memory:
        return model.encode(batch.src, batch.src_mask)

    def loss_from_encoding(self, model: nn.Module, batch: Any, memory: Memory | None, ctx: StepContext) -> Tensor:
        logits = self.logits(model, batch, ctx, memory)
        return nn.functional.cross_entropy(logits.flatten(0, 1).float(), batch.tgt_out.flatten(),
                                           ignore_index=PAD, label_smoothing=self.label_smoothing)

    def split_encoding(self, memory: Memory, batch: Any) -> list[dict[str, Tensor]]:
        lengths = memory.mask.sum(1).tolist()
        rows = [{"states": memory.states[i, :n]} for i, n in enumerate(lengths)]
        if memory.final is not None:
            for i, row in enumerate(rows):
                row["final"] = memory.final[:, i]
        return rows

    def merge_encoding(self, rows: list[dict[str, Tensor]], batch: Any) -> Memory:
        states = nn.utils.rnn.pad_sequence([r["states"] for r in rows], batch_first=True)
        lengths = torch.tensor([r["states"].shape[0] for r in rows], device=states.device)
        mask = torch.arange(states.shape[1], device=states.device) < lengths[:, None]
        final = torch.stack([r["final"] for r in rows], dim=1) if "final" in rows[0] else None
        return Memory(states, mask, final)

    def merge_padded(self, columns: dict[str, tuple[Tensor, Tensor]], batch: Any) -> Memory:
        """:meth:`merge_encoding` from rows already padded (the cache's vectorised lookup)."""
        states, lengths = columns["states"]
        mask = torch.arange(states.shape[1], device=states.device) < lengths[:, None]
        final = columns["final"][0].transpose(0, 1) if "final" in columns else None
        return Memory(states, mask, final)

    def row_ids(self, batch: Any) -> Tensor:
        return batch.index

    def decode(self, model: nn.Module, src: Tensor, src_mask: Tensor) -> list[list[int]]:
        max_len = int(src.shape[1] * self.max_len_ratio) + 5
        if self.beam_size == 1:
            return greedy_decode(model, src, src_mask, max_len=max_len)
        return beam_search(model, src, src_mask, beam_size=self.beam_size, max_len=max_len)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Iterable[Any], dataset: Any = None) -> dict[str, float]:
        """Teacher-forced loss and token accuracy; with ``tgt_vocab`` and a dataset holding
        ``references``, also WER and PER of decoded predictions (see :mod:`partwise.metrics`)."""
        from ..metrics import score_g2p

        total, tokens, correct = 0.0, 0, 0
        predictions: list[list[str]] = []
        references: list[list[list[str]]] = []
        score = self.tgt_vocab is not None and getattr(dataset, "references", None) is not None
        for batch in batches:
            logits = self.logits(model, batch)
            mask = batch.tgt_out != PAD
            total += float(nn.functional.cross_entropy(logits.flatten(0, 1).float(), batch.tgt_out.flatten(),
                                                       ignore_index=PAD, reduction="sum"))
            tokens += int(mask.sum())
            correct += int(((logits.argmax(-1) == batch.tgt_out) & mask).sum())
            if score:
                for ids, i in zip(self.decode(model, batch.src, batch.src_mask), batch.index.tolist(), strict=True):
                    predictions.append(self.tgt_vocab.decode(ids))
                    references.append(dataset.references[i])
        out = {"loss": total / max(tokens, 1), "token_acc": correct / max(tokens, 1)}
        if score and predictions:
            scores = score_g2p(predictions, references)
            out.update(wer=scores["wer"], per=scores["per"])
        return out
