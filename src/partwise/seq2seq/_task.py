"""The seq2seq task: cross-entropy with teacher forcing for training; decoding and error rates for evaluation."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from .._train._task import StepContext
from ._decoding import MaxLen, beam_search, encoder_decoder, greedy_decode
from ._protocol import PAD, Memory
from ._teacher_forcing import phase_teacher_forcing

__all__ = ["Seq2SeqTask", "max_len_from"]


class Seq2SeqTask:
    """Cross-entropy on the decoder's outputs, with teacher forcing or scheduled sampling.

    Args:
        teacher_forcing: a :class:`~partwise.seq2seq.TeacherForcing`; a plan phase's own
            (``task_options={"teacher_forcing": ...}``) overrides it.
            ``None``: plain teacher forcing (one parallel decoder call).
        label_smoothing: passed to ``cross_entropy``.
        tgt_vocab: needed to score predictions as tokens in :meth:`evaluate`.
        beam_size: 1 = greedy decoding in evaluation, else beam search.
        max_len: the decoding limit per row, in steps (``EOS`` included): an int (e.g. from
            :func:`max_len_from`, fitted on the training targets), or a function of the ``(B,)``
            source lengths. ``None``: ``ceil(src_len * max_len_ratio) + 5`` of each row's own length.
        max_len_ratio: the ratio used when ``max_len`` is ``None``.
        metric_names: the names of the sequence error rate and the token error rate in
            :meth:`evaluate` (G2P calls them ``("wer", "per")``).

    :meth:`evaluate` measures what it says: the loss and token accuracy are teacher-forced (ratio 1,
    whatever the schedule), it draws no random numbers (torch's RNG is left as it was), a row decodes
    the same whichever batch it is in, and it counts in ``at_max_len`` the rows whose decoding hit the
    limit (their outputs may be cut short). Batches are :class:`partwise.data.Batch` (``src``,
    ``src_mask``, ``tgt_in``, ``tgt_out``, ``index``).

    Examples:
        >>> task = Seq2SeqTask(max_len=30)
        >>> task.metrics
        ('loss', 'token_acc')
    """

    def __init__(self, teacher_forcing: Any = None, label_smoothing: float = 0.0, tgt_vocab: Any = None,
                 beam_size: int = 1, max_len: MaxLen | None = None, max_len_ratio: float = 2.0,
                 metric_names: tuple[str, str] = ("seq_error", "token_error")):
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing={label_smoothing!r} must be in [0, 1)")
        if beam_size < 1:
            raise ValueError(f"beam_size={beam_size!r} must be >= 1")
        if max_len is not None and not callable(max_len) and (isinstance(max_len, bool) or not isinstance(max_len, int)
                                                               or max_len < 1):
            raise ValueError(f"max_len={max_len!r} must be an int >= 1, a function of the source lengths, or None")
        if isinstance(max_len_ratio, bool) or not isinstance(max_len_ratio, int | float) or not max_len_ratio > 0:
            raise ValueError(f"max_len_ratio={max_len_ratio!r} must be a number > 0")
        if len(metric_names) != 2 or len(set(metric_names)) != 2:
            raise ValueError(f"metric_names={metric_names!r} must be two distinct names, e.g. ('wer', 'per')")
        self.teacher_forcing, self.label_smoothing = teacher_forcing, label_smoothing
        self.tgt_vocab, self.beam_size = tgt_vocab, beam_size
        self.max_len, self.max_len_ratio, self.metric_names = max_len, max_len_ratio, tuple(metric_names)

    @property
    def metrics(self) -> tuple[str, ...]:
        """What :meth:`evaluate` returns (the error rates need ``tgt_vocab`` and references in the dataset)."""
        if self.tgt_vocab is None:
            return ("loss", "token_acc")
        return ("loss", "token_acc", *self.metric_names, "at_max_len")

    def enter_phase(self, start: int) -> None:
        """A phase begins at step ``start`` (the trainer calls this): the task's own teacher forcing
        restarts its schedule there when it counts from the phase."""
        if self.teacher_forcing is not None:
            self.teacher_forcing.enter_phase(start)

    def logits(self, model: nn.Module, batch: Any, ctx: StepContext | None = None,
               memory: Memory | None = None) -> Tensor:
        """Training logits: the phase's (else the task's) teacher forcing at ``ctx.step``."""
        m = encoder_decoder(model)
        if memory is None:
            memory = m.encode(batch.src, batch.src_mask)
        tf = phase_teacher_forcing(ctx.task_options if ctx is not None else None, self.teacher_forcing)
        if tf is None or ctx is None:
            return m.decoder(batch.tgt_in, memory, m.decoder.initial_state(memory))
        return tf(m.decoder, memory, batch.tgt_in, step=ctx.step)

    def loss(self, model: nn.Module, batch: Any, ctx: StepContext) -> Tensor:
        return self.loss_from_encoding(model, batch, None, ctx)

    # -- frozen-encoder cache protocol (see partwise.EncoderCache) ------------------------------------
    def encoder_of(self, model: nn.Module) -> nn.Module:
        encoder: nn.Module = encoder_decoder(model).encoder
        return encoder

    def encode(self, model: nn.Module, batch: Any) -> Memory:
        return encoder_decoder(model).encode(batch.src, batch.src_mask)

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

    # -- decoding and evaluation ------------------------------------------------------------------
    def limits(self, src_mask: Tensor) -> Tensor:
        """``(B,)`` decoding step limits, each from its own row's source length (never the padded width)."""
        lengths = src_mask.sum(dim=1)
        if self.max_len is None:
            return (lengths.double() * self.max_len_ratio).ceil().long() + 5
        value = self.max_len(lengths) if callable(self.max_len) else self.max_len
        return torch.as_tensor(value, device=src_mask.device).long().expand(lengths.shape)

    def decode(self, model: nn.Module, src: Tensor, src_mask: Tensor) -> list[list[int]]:
        """Token ids per row (no ``BOS``/``EOS``); a row hit its limit when it has ``limits`` tokens."""
        limits = self.limits(src_mask)
        if self.beam_size == 1:
            return greedy_decode(encoder_decoder(model), src, src_mask, max_len=lambda n: limits)
        return beam_search(encoder_decoder(model), src, src_mask, beam_size=self.beam_size, max_len=lambda n: limits)

    def decode_counted(self, model: nn.Module, src: Tensor, src_mask: Tensor) -> tuple[list[list[int]], int]:
        """:meth:`decode` and how many rows stopped at their limit instead of at ``EOS``."""
        out = self.decode(model, src, src_mask)
        limits = self.limits(src_mask).tolist()
        return out, sum(len(ids) >= n for ids, n in zip(out, limits, strict=True))

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Iterable[Any], dataset: Any = None) -> dict[str, float]:
        """Teacher-forced loss and token accuracy (ratio 1); with ``tgt_vocab`` and a dataset holding
        ``references``, also the sequence and token error rates of decoded outputs (named by
        ``metric_names``; see :func:`partwise.metrics.score_sequences`) and ``at_max_len``."""
        from ..metrics import score_sequences

        total, tokens, correct, truncated = 0.0, 0, 0, 0
        predictions: list[list[str]] = []
        references: list[list[list[str]]] = []
        score = self.tgt_vocab is not None and getattr(dataset, "references", None) is not None
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []  # type: ignore[no-untyped-call]
        with torch.random.fork_rng(devices=devices):  # a DataLoader draws a seed per iteration: not from training's RNG
            for batch in batches:
                total, tokens, correct, truncated = self._score_batch(
                    model, batch, dataset, score, (total, tokens, correct, truncated), predictions, references)
        out = {"loss": total / max(tokens, 1), "token_acc": correct / max(tokens, 1)}
        if score and predictions:
            scores = score_sequences(predictions, references)
            seq_name, tok_name = self.metric_names
            out.update({seq_name: scores["seq_error"], tok_name: scores["token_error"], "at_max_len": truncated})
        return out

    def _score_batch(self, model: nn.Module, batch: Any, dataset: Any, score: bool, sums: tuple[float, int, int, int],
                     predictions: list[list[str]], references: list[list[list[str]]]) -> tuple[float, int, int, int]:
        """Add one batch's teacher-forced loss and accuracy to ``sums``; decode it when scoring."""
        total, tokens, correct, truncated = sums
        logits = self.logits(model, batch)  # no ctx: plain teacher forcing, no random draws
        mask = batch.tgt_out != PAD
        total += float(nn.functional.cross_entropy(logits.flatten(0, 1).float(), batch.tgt_out.flatten(),
                                                   ignore_index=PAD, reduction="sum"))
        tokens += int(mask.sum())
        correct += int(((logits.argmax(-1) == batch.tgt_out) & mask).sum())
        if score:
            decoded, hit = self.decode_counted(model, batch.src, batch.src_mask)
            truncated += hit
            for ids, i in zip(decoded, batch.index.tolist(), strict=True):
                predictions.append(self.tgt_vocab.decode(ids, strip_special=False))
                references.append(dataset.references[i])
        return total, tokens, correct, truncated


def max_len_from(dataset: Any, factor: float = 1.5, margin: int = 5) -> int:
    """A decoding limit fitted on training targets: ``ceil(longest * factor) + margin`` steps, where
    ``longest`` is the longest target of ``dataset`` with its ``EOS`` (``dataset.tgt_lengths``, as
    :class:`~partwise.data.Seq2SeqDataset` has).

    Examples:
        >>> from partwise.data import Seq2SeqDataset, Vocab
        >>> v = Vocab.build([list("abc")])
        >>> max_len_from(Seq2SeqDataset([(["a"], list("abcabc"))], v, v))
        16
    """
    lengths = getattr(dataset, "tgt_lengths", None)
    if lengths is None or len(lengths) == 0:
        raise ValueError("max_len_from(): the dataset has no tgt_lengths; pass a partwise.data.Seq2SeqDataset")
    return math.ceil(int(lengths.max()) * factor) + margin
