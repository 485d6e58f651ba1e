"""A trainer task for Hugging Face encoder–decoders: loss, scheduled sampling, generate-based metrics,
and the frozen-encoder cache through ``encoder_outputs=``."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from transformers.modeling_outputs import BaseModelOutput

from .._errors import CacheRefused
from .._train._task import StepContext
from ..seq2seq import phase_teacher_forcing
from ._teacher_forcing import IGNORE, decoder_logits, shift_right

__all__ = ["Seq2SeqLMTask", "Encoding", "NOT_ENCODER_INPUTS"]

#: batch keys that are not encoder inputs (everything else in a dict batch goes to the encoder)
NOT_ENCODER_INPUTS = ("labels", "decoder_input_ids", "decoder_attention_mask", "index")
MetricFn = Callable[[list[list[int]], list[list[int]]], Mapping[str, float]]


@dataclass
class Encoding:
    """The encoder's output for a batch: hidden states ``(B, S, H)`` and the source mask (or ``None``)."""

    hidden: Tensor
    mask: Tensor | None

    def outputs(self) -> BaseModelOutput:
        """What the model's ``encoder_outputs=`` argument takes."""
        return BaseModelOutput(last_hidden_state=self.hidden)


def _token_ids(config: Any, name: str) -> int | None:
    value = getattr(config, name, None)
    first = value[0] if isinstance(value, list | tuple) and value else value
    return first if isinstance(first, int) else None


def _cut(ids: list[int], eos: set[int], drop: set[int]) -> list[int]:
    out = []
    for i in ids:
        if i in eos:
            break
        if i not in drop:
            out.append(i)
    return out


class Seq2SeqLMTask:
    """Train and evaluate any HF encoder–decoder with :class:`partwise.Trainer`.

    Args:
        teacher_forcing: a :class:`~partwise.seq2seq.TeacherForcing` (a plan phase's own,
            ``task_options={"teacher_forcing": ...}``, overrides it).
            ``None``: plain teacher forcing, one parallel decoder call.
        label_smoothing: passed to ``cross_entropy``.
        num_beams: 1 = greedy ``generate`` in :meth:`evaluate`, else beam search.
        max_new_tokens: generation limit; default ``source length * max_len_ratio + 5`` (text inputs)
            or ``target length + 5``.
        metric_fn: ``metric_fn(predictions, references) -> {name: value}`` on token-id lists (without
            the start token, cut at the end-of-sequence token); its results join :meth:`evaluate`'s.
        tgt_vocab: a :class:`partwise.data.Vocab`: with a dataset holding ``references`` (partwise's
            data), :meth:`evaluate` also gives the sequence and token error rates, named by
            ``metric_names`` (G2P: ``("wer", "per")``, the default).
        metric_names: the names of those two error rates.
        generate_kwargs: more keyword arguments for ``model.generate``.

    Batches are dicts (encoder inputs such as ``input_ids``/``attention_mask``/``input_features``,
    ``labels`` padded with -100, optional ``decoder_input_ids`` and ``index``; see
    :class:`partwise.hf.Seq2SeqLMCollator`) or :class:`partwise.data.Batch` (``src``, ``src_mask``,
    ``tgt_in`` as decoder inputs, ``tgt_out`` as labels with PAD ignored).

    Examples:
        >>> from transformers import T5Config, T5ForConditionalGeneration
        >>> model = T5ForConditionalGeneration(T5Config(vocab_size=32, d_model=8, d_kv=4, d_ff=16, num_layers=1,
        ...                                             num_heads=2, decoder_start_token_id=0))
        >>> batch = {"input_ids": torch.tensor([[5, 6, 1]]), "labels": torch.tensor([[7, 1, -100]])}
        >>> task = Seq2SeqLMTask()
        >>> bool(task.loss(model, batch, StepContext(0, 0, "x")) > 0)
        True
    """

    def __init__(self, teacher_forcing: Any = None, *, label_smoothing: float = 0.0, num_beams: int = 1,
                 max_new_tokens: int | None = None, max_len_ratio: float = 2.0, metric_fn: MetricFn | None = None,
                 tgt_vocab: Any = None, generate_kwargs: Mapping[str, Any] | None = None,
                 metric_names: tuple[str, str] = ("wer", "per")):
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing={label_smoothing!r} must be in [0, 1)")
        if num_beams < 1:
            raise ValueError(f"num_beams={num_beams!r} must be >= 1")
        if max_new_tokens is not None and max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={max_new_tokens!r} must be >= 1")
        self.teacher_forcing, self.label_smoothing, self.num_beams = teacher_forcing, label_smoothing, num_beams
        self.max_new_tokens, self.max_len_ratio, self.metric_fn = max_new_tokens, max_len_ratio, metric_fn
        self.tgt_vocab, self.generate_kwargs = tgt_vocab, dict(generate_kwargs or {})
        self.metric_names = tuple(metric_names)

    @property
    def beam_size(self) -> int:
        """Alias of ``num_beams`` (the name partwise's own seq2seq task uses)."""
        return self.num_beams

    @beam_size.setter
    def beam_size(self, value: int) -> None:
        self.num_beams = value

    # -- batches ---------------------------------------------------------------------------------
    def split(self, model: nn.Module, batch: Any) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        """``(encoder inputs, labels with -100 at padding, decoder_input_ids)`` of a batch."""
        if hasattr(batch, "src") and hasattr(batch, "tgt_out"):  # partwise.data.Batch (PAD = 0)
            labels = batch.tgt_out.masked_fill(batch.tgt_out == 0, IGNORE)
            return {"input_ids": batch.src, "attention_mask": batch.src_mask.long()}, labels, batch.tgt_in
        if not isinstance(batch, Mapping) or "labels" not in batch:
            raise TypeError(f"Seq2SeqLMTask batches are dicts with 'labels' (and encoder inputs such as "
                            f"'input_ids') or partwise.data.Batch; got {type(batch).__name__}")
        labels = batch["labels"]
        enc = {k: v for k, v in batch.items() if k not in NOT_ENCODER_INPUTS}
        dec = batch.get("decoder_input_ids")
        if dec is None:
            config = model.config
            start = _token_ids(config, "decoder_start_token_id")
            if start is None:
                start = _token_ids(getattr(model, "generation_config", None), "decoder_start_token_id")
            if start is None:
                raise ValueError(f"{type(model).__name__}: config.decoder_start_token_id is not set; set it, or "
                                 "give the batch decoder_input_ids")
            pad = _token_ids(config, "pad_token_id")
            dec = shift_right(labels, start, pad if pad is not None else 0)
        return enc, labels, dec

    def row_ids(self, batch: Any) -> Tensor:
        index = batch.index if hasattr(batch, "index") else batch.get("index") if isinstance(batch, Mapping) else None
        if index is None:
            raise CacheRefused("the frozen-encoder cache needs a row id per example: give batches an 'index' "
                             "(partwise.hf.Seq2SeqLMDataset and Seq2SeqLMCollator do)")
        return index

    # -- training ----------------------------------------------------------------------------------
    def encoder_of(self, model: nn.Module) -> nn.Module:
        hf: Any = model  # a Hugging Face PreTrainedModel, duck-typed
        encoder: nn.Module = hf.get_encoder()
        return encoder

    def encode(self, model: nn.Module, batch: Any) -> Encoding:
        enc, _, _ = self.split(model, batch)
        out = self.encoder_of(model)(**enc, return_dict=True)
        return Encoding(out.last_hidden_state, enc.get("attention_mask"))

    def enter_phase(self, start: int) -> None:
        """A phase begins at step ``start`` (the trainer calls this): the task's own teacher forcing
        restarts its schedule there when it counts from the phase."""
        if self.teacher_forcing is not None:
            self.teacher_forcing.enter_phase(start)

    def logits(self, model: nn.Module, batch: Any, ctx: StepContext | None = None,
               encoding: Encoding | None = None) -> Tensor:
        """Decoder logits ``(B, T, V)`` under the step's teacher forcing (plain when ``ctx`` is None)."""
        _, labels, dec = self.split(model, batch)
        if encoding is None:
            encoding = self.encode(model, batch)
        tf = phase_teacher_forcing(ctx.task_options, self.teacher_forcing) if ctx is not None else None
        return decoder_logits(model, encoding, dec, labels, tf, ctx.step if ctx is not None else 0)

    def loss(self, model: nn.Module, batch: Any, ctx: StepContext) -> Tensor:
        return self.loss_from_encoding(model, batch, None, ctx)

    def loss_from_encoding(self, model: nn.Module, batch: Any, encoding: Encoding | None, ctx: StepContext) -> Tensor:
        """Cross-entropy over non-padding labels (what the model's own ``labels=`` loss computes)."""
        _, labels, _ = self.split(model, batch)
        logits = self.logits(model, batch, ctx, encoding)
        return nn.functional.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE,
                                           label_smoothing=self.label_smoothing)

    # -- frozen-encoder cache (see partwise.EncoderCache) ----------------------------------------------
    def split_encoding(self, encoding: Encoding, batch: Any) -> list[dict[str, Tensor]]:
        h = encoding.hidden
        lengths = encoding.mask.sum(1).tolist() if encoding.mask is not None else [h.shape[1]] * h.shape[0]
        return [{"hidden": h[i, : int(n)]} for i, n in enumerate(lengths)]

    def merge_encoding(self, rows: list[dict[str, Tensor]], batch: Any) -> Encoding:
        hidden = nn.utils.rnn.pad_sequence([r["hidden"] for r in rows], batch_first=True)
        has_mask = hasattr(batch, "src_mask") or (
            isinstance(batch, Mapping) and batch.get("attention_mask") is not None)
        if not has_mask:
            return Encoding(hidden, None)
        lengths = torch.tensor([r["hidden"].shape[0] for r in rows], device=hidden.device)
        mask = (torch.arange(hidden.shape[1], device=hidden.device) < lengths[:, None]).long()
        return Encoding(hidden, mask)

    def merge_padded(self, columns: dict[str, tuple[Tensor, Tensor]], batch: Any) -> Encoding:
        """:meth:`merge_encoding` from rows already padded (the cache's vectorised lookup)."""
        hidden, lengths = columns["hidden"]
        has_mask = hasattr(batch, "src_mask") or (
            isinstance(batch, Mapping) and batch.get("attention_mask") is not None)
        if not has_mask:
            return Encoding(hidden, None)
        return Encoding(hidden, (torch.arange(hidden.shape[1], device=hidden.device) < lengths[:, None]).long())

    # -- evaluation -------------------------------------------------------------------------------
    def generate(self, model: nn.Module, batch: Any) -> list[list[int]]:
        """Greedy or beam ``model.generate`` outputs as token-id lists (start token and padding dropped,
        cut at the end-of-sequence token)."""
        enc, labels, _ = self.split(model, batch)
        return self.generate_from(model, enc, labels.shape[1] + 5)

    def generate_from(self, model: nn.Module, encoder_inputs: Mapping[str, Tensor],
                      fallback_limit: int = 64) -> list[list[int]]:
        """:meth:`generate` from encoder inputs alone (``input_ids`` ... without labels)."""
        limit = self.max_new_tokens
        if limit is None:
            ids = encoder_inputs.get("input_ids")
            limit = int(ids.shape[1] * self.max_len_ratio) + 5 if ids is not None else fallback_limit
        kwargs = {"num_beams": self.num_beams, "do_sample": False, "max_new_tokens": limit, **self.generate_kwargs}
        hf: Any = model
        out = hf.generate(**encoder_inputs, **kwargs)
        eos, pad = self._special(model)
        return [_cut(row[1:], eos, pad) for row in out.tolist()]

    def _special(self, model: nn.Module) -> tuple[set[int], set[int]]:
        gen = getattr(model, "generation_config", None)
        eos: set[int] = set()
        for src in (gen, model.config):
            value = getattr(src, "eos_token_id", None)
            eos |= set(value) if isinstance(value, list | tuple) else ({value} if value is not None else set())
        pad = {v for v in (_token_ids(model.config, "pad_token_id"), _token_ids(gen, "pad_token_id")) if v is not None}
        return eos, pad

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Iterable[Any], dataset: Any = None) -> dict[str, float]:
        """Teacher-forced ``loss`` and ``token_acc``; ``seq_acc`` of ``generate`` outputs against the
        labels; with ``tgt_vocab`` and a dataset holding ``references``, the two error rates; then
        ``metric_fn``. Torch's RNG is left as it was."""
        with torch.random.fork_rng(devices=[]):
            return self._evaluate(model, batches, dataset)

    def _evaluate(self, model: nn.Module, batches: Iterable[Any], dataset: Any) -> dict[str, float]:
        from ..metrics import score_g2p

        total, tokens, correct = 0.0, 0, 0
        predictions: list[list[int]] = []
        references: list[list[int]] = []
        rows: list[int] = []
        eos: set[int] | None = None
        for batch in batches:
            _, labels, _ = self.split(model, batch)
            logits = self.logits(model, batch)
            mask = labels != IGNORE
            total += float(nn.functional.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(),
                                                       ignore_index=IGNORE, reduction="sum"))
            tokens += int(mask.sum())
            correct += int(((logits.argmax(-1) == labels) & mask).sum())
            if eos is None:
                eos, _ = self._special(model)
            predictions += self.generate(model, batch)
            references += [_cut([t for t in row if t != IGNORE], eos, set()) for row in labels.tolist()]
            if hasattr(batch, "index") or (isinstance(batch, Mapping) and "index" in batch):
                rows += self.row_ids(batch).tolist()
        out = {"loss": total / max(tokens, 1), "token_acc": correct / max(tokens, 1),
               "seq_acc": sum(p == r for p, r in zip(predictions, references, strict=True)) / max(len(references), 1)}
        refs = getattr(dataset, "references", None)
        if self.tgt_vocab is not None and refs is not None and len(rows) == len(predictions) and predictions:
            scores = score_g2p([self.tgt_vocab.decode(p) for p in predictions], [refs[i] for i in rows])
            out.update({self.metric_names[0]: scores["wer"], self.metric_names[1]: scores["per"]})
        if self.metric_fn is not None:
            out.update({k: float(v) for k, v in self.metric_fn(predictions, references).items()})
        return out
