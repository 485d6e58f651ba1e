"""The ``seq2seq`` task kind: CMUdict G2P or your own pair files, with a reference encoder–decoder,
a Hugging Face model or your own factory.

A custom model factory (``model: {name: "package.module:factory", args: {...}}``) is:

* imported from ``model.path`` — the recipe's folder unless given (no ``PYTHONPATH`` needed), put
  first on ``sys.path``;
* called as ``factory(src_vocab_size, tgt_vocab_size, **model.args)`` with the real vocabulary sizes
  of the run's data, once per command that builds the model (``train``, ``inspect``, ``resume``,
  ``eval``, ``predict``), after the data is read and never with stand-in sizes; its ``args`` are
  checked against its signature first (unknown keys rejected, annotated types enforced);
* expected to return an ``nn.Module`` that follows the seq2seq protocol (:mod:`partwise.seq2seq`:
  ``encode(src, src_mask) -> Memory`` and a ``decoder`` with ``initial_state``/``step``/``reorder_state``
  and a parallel ``forward``). Its weights are then set by ``init:`` (a new run) or by the run's
  checkpoint (``resume``, ``eval``, ``predict``); a factory should not load weights itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from .._errors import ConfigError
from ..data import (
    BucketBatchSampler,
    DataFormatError,
    Seq2SeqDataset,
    Tokenization,
    Vocab,
    collate,
    make_g2p_datasets,
    read_pairs,
)
from ..recipe import (
    CmudictData,
    GRUArgs,
    HFArgs,
    Kind,
    KindData,
    PairsData,
    Recipe,
    Seq2SeqTaskArgs,
    TransformerArgs,
    build_teacher_forcing,
    error_names,
    import_object,
    training_subset,
)
from ..recipe._args import SEQ2SEQ_HINT
from ..seq2seq import Seq2SeqTask, gru_seq2seq, max_len_from, transformer_seq2seq
from . import _hf_models as _hf

__all__ = ["Seq2SeqKind", "Prediction", "model_factory", "resolve_factory", "tokenization"]

FACTORIES = {"gru": gru_seq2seq, "transformer": transformer_seq2seq}
PAIRS_DOCS = "docs/guides/own-data.md, 'Pair files'"


def resolve_factory(name: str, path: str | None = None) -> Any:
    """A user's ``package.module:factory``, imported with ``path`` (a folder) first on ``sys.path``."""
    factory = import_object(name, path, "model.name", "docs/guides/own-data.md, 'Custom models'")
    if not callable(factory):
        raise ConfigError([f"model.name: {name!r} is a {type(factory).__name__}, not a callable factory"])
    return factory


def model_factory(name: str, factories: dict[str, Any], path: str | None = None) -> Any:
    """A factory by registered name, or a user's ``package.module:factory``."""
    if name in factories:
        return factories[name]
    if ":" in name:
        return resolve_factory(name, path)
    raise ConfigError([f"model.name: {name!r} is not one of {sorted(factories)}, 'hf' or 'package.module:factory'"])


def eval_loader(dataset: Seq2SeqDataset | None, batch_size: int = 256) -> DataLoader[Any] | None:
    if dataset is None:
        return None
    return DataLoader(dataset, collate_fn=collate,
                      batch_sampler=BucketBatchSampler(dataset.lengths, batch_size, shuffle=False))


def tokenization(side: Any) -> Tokenization:
    """The :class:`~partwise.data.Tokenization` of a recipe's ``data.source`` / ``data.target``."""
    return Tokenization(side.tokenize, getattr(side, "pattern", None), getattr(side, "path", None),
                        getattr(side, "lowercase", False))


def _sides(recipe: Recipe) -> tuple[Tokenization, Tokenization]:
    """Source and target tokenisation: CMUdict is lowercase characters to ARPAbet symbols."""
    d = recipe.data
    if not isinstance(d, PairsData):  # CMUdict: lowercase characters to ARPAbet symbols
        return Tokenization("char", lowercase=True), Tokenization("space")
    return tokenization(d.source), tokenization(d.target)


@dataclass(frozen=True)
class Prediction:
    """One input's output: its tokens, the input's tokens outside the source vocabulary, whether
    decoding stopped at the length limit (the output may be cut short)."""

    tokens: list[str]
    unknown: list[str]
    at_max_len: bool


class Seq2SeqKind(Kind):
    """Sequence to sequence: ``data.name`` cmudict or pairs; models gru, transformer, hf or your factory
    (see the module docs for the factory contract)."""

    name = "seq2seq"
    task_args, task_args_hint = Seq2SeqTaskArgs, SEQ2SEQ_HINT
    model_args = {"gru": GRUArgs, "transformer": TransformerArgs, "hf": HFArgs}
    custom_models, decodes = True, True
    metrics = ("loss", "token_acc", "seq_error", "token_error", "at_max_len")  # cmudict: wer, per

    def metrics_for(self, recipe: Recipe) -> tuple[str, ...]:
        seq, tok = error_names(recipe)
        return tuple({"seq_error": seq, "token_error": tok}.get(m, m) for m in self.metrics)

    def default_best(self, recipe: Recipe) -> tuple[str | None, str]:
        return error_names(recipe)[0], "min"

    def check(self, recipe: Recipe) -> None:
        d, errors = recipe.data, []
        if d.name not in ("cmudict", "pairs"):
            raise ConfigError([f"data.name: {d.name!r} does not fit task 'seq2seq'; use cmudict or pairs"])
        if d.name != "cmudict":
            errors += [f"data.{split}: {path!r} {'is not a file' if Path(path).exists() else 'not found'}; give a "
                       f"pair file (TSV, CSV or JSON lines; {PAIRS_DOCS})"
                       for split in ("train", "dev", "test")
                       if (path := getattr(d, split)) and not Path(path).is_file()]
            for side in ("source", "target"):
                tok = tokenization(getattr(d, side))
                if tok.kind == "hf":
                    try:
                        tok.load()
                    except ValueError as e:
                        errors.append(f"data.{side}.path: {e}")
        if recipe.model.name == "hf":  # a Hugging Face encoder-decoder (partwise[hf]; see tasks/_hf_models.py)
            try:
                _hf.check(recipe.model.args)
            except ConfigError as e:
                errors += e.errors
        else:
            try:
                model_factory(recipe.model.name, FACTORIES, recipe.model.path)
            except ConfigError as e:
                errors += e.errors
        if errors:
            raise ConfigError(errors)

    def checks_need_data(self, recipe: Recipe) -> bool:
        """A custom factory is only called with the data's sizes: parts and plan are checked after reading it."""
        return recipe.model.name not in FACTORIES and recipe.model.name != "hf"

    def model_for_check(self, recipe: Recipe) -> nn.Module | None:
        """The recipe's model with stand-in vocabulary sizes (part names do not depend on them), or
        ``None`` for a custom factory: it is only ever called with the data's sizes, so its parts and
        plan are checked once the data is read (still before anything is written)."""
        if recipe.model.name == "hf":
            # stand-in sizes that hold partwise's special ids (PAD=0 .. EOS=3); the data's are checked when read
            return _hf.build_model(recipe.model.args, 8, 8)
        if recipe.model.name not in FACTORIES:
            return None
        return self.build_model(recipe, KindData(None, None, None, {"src": range(40), "tgt": range(80)}))

    def load_data(self, recipe: Recipe, artifacts: dict[str, Any] | None) -> KindData:
        d = recipe.data
        vocabs = None if artifacts is None else (Vocab.from_dict(artifacts["src"]), Vocab.from_dict(artifacts["tgt"]))
        if isinstance(d, CmudictData):
            note: list[str | None] = [None]  # what training_subset says, for the log and report

            def keep(words: list[str]) -> list[int]:
                kept, note[0] = training_subset(recipe, range(len(words)), "words")
                return kept

            g = make_g2p_datasets(stress=d.stress, limit=d.limit, train_words=keep, pronunciations=d.pronunciations)
            if vocabs is not None and (vocabs[0] != g.src_vocab or vocabs[1] != g.tgt_vocab):
                raise ConfigError(["data: the run's saved vocabulary differs from this data's; "
                                   "use the run's own data settings"])
            return KindData(g.train, g.dev, g.test, {"src": g.src_vocab, "tgt": g.tgt_vocab,
                                                       "subset": note[0]})
        if not isinstance(d, PairsData):
            raise ConfigError([f"data.name: {d.name!r} does not fit task 'seq2seq'; use cmudict or a pair file"])
        src_tok, tgt_tok = _sides(recipe)
        pairs: dict[str, list[tuple[list[str], list[str]]] | None] = {}
        for split in ("train", "dev", "test"):
            path = getattr(d, split)
            try:
                pairs[split] = read_pairs(path, src_tok, tgt_tok, format=d.format, encoding=d.encoding,
                                          fields=d.fields) if path else None
            except DataFormatError:
                raise  # names the file and every bad line
            except ValueError as e:  # a format or tokenizer problem
                raise ConfigError([f"data.{split}: {e} ({PAIRS_DOCS})"]) from None
        if d.limit:
            pairs = {k: (v[: d.limit] if v else v) for k, v in pairs.items()}
        pairs["train"], subset = training_subset(recipe, pairs["train"] or [], "pairs")
        if vocabs is None:
            train = pairs["train"] or []
            vocabs = (Vocab.build(s for s, _ in train), Vocab.build(t for _, t in train))
        sets = {k: Seq2SeqDataset(v, *vocabs) if v else None for k, v in pairs.items()}
        return KindData(sets["train"], sets["dev"], sets["test"],
                        {"src": vocabs[0], "tgt": vocabs[1], "subset": subset})

    def artifacts(self, data: KindData) -> dict[str, Any]:
        return {"src": data.extra["src"].to_dict(), "tgt": data.extra["tgt"].to_dict()}

    def build_model(self, recipe: Recipe, data: KindData) -> nn.Module:
        torch.manual_seed(recipe.seed)
        if recipe.model.name == "hf":
            return _hf.build_model(recipe.model.args, len(data.extra["src"]), len(data.extra["tgt"]))
        factory = model_factory(recipe.model.name, FACTORIES, recipe.model.path)
        try:
            model = factory(len(data.extra["src"]), len(data.extra["tgt"]), **recipe.model.args)
        except (TypeError, ValueError) as e:
            raise ConfigError([f"model.args: {e}"]) from None
        if not isinstance(model, nn.Module):
            raise ConfigError([f"model.name: {recipe.model.name!r} returned a {type(model).__name__}, not an "
                               "nn.Module (see docs/guides/own-data.md, 'Custom models')"])
        return model

    def max_len(self, recipe: Recipe, data: KindData, override: int | None = None) -> int | None:
        """The decoding limit: ``--max-len``, ``eval.max_len``, else fitted on the training targets
        (``None`` when ``eval.max_len_ratio`` asks for a per-row ratio instead)."""
        if override is not None:
            return override
        if recipe.eval.max_len is not None:
            return recipe.eval.max_len
        if recipe.eval.max_len_ratio is not None:
            return None
        return max_len_from(data.train)

    def build_task(self, recipe: Recipe, data: KindData, max_len: int | None = None) -> Any:
        limit = self.max_len(recipe, data, max_len)
        tf = build_teacher_forcing(recipe.teacher_forcing, "teacher_forcing")
        if recipe.model.name == "hf":
            return _hf.build_task(recipe, data, tf, limit, error_names(recipe))
        return Seq2SeqTask(teacher_forcing=tf, label_smoothing=recipe.training.label_smoothing,
                           tgt_vocab=data.extra["tgt"], beam_size=recipe.eval.beam_size, max_len=limit,
                           max_len_ratio=recipe.eval.max_len_ratio or 2.0, metric_names=error_names(recipe))

    def loaders(self, recipe: Recipe, data: KindData) -> tuple[DataLoader[Any], DataLoader[Any] | None]:
        train = DataLoader(data.train, collate_fn=collate, batch_sampler=BucketBatchSampler(
            data.train.lengths, recipe.training.batch_size, seed=recipe.seed))
        return train, eval_loader(data.dev)

    def eval_loader(self, recipe: Recipe, dataset: Any) -> DataLoader[Any] | None:
        return eval_loader(dataset)

    def join(self, recipe: Recipe, tokens: list[str], sep: str | None = None) -> str:
        """Output tokens as text: ``sep``, else the target tokenisation's joiner ("" for characters)."""
        return _sides(recipe)[1].join(tokens, sep)

    def predict_details(self, recipe: Recipe, model: nn.Module, data: KindData, inputs: list[str],
                        beam_size: int | None, max_len: int | None = None) -> list[Prediction]:
        """Decode ``inputs`` (texts, tokenised like the run's sources) with the run's settings."""
        src_vocab, tgt_vocab = data.extra["src"], data.extra["tgt"]
        task = self.build_task(recipe, data, max_len)
        if beam_size:
            task.beam_size = beam_size
        src_tok = _sides(recipe)[0]
        tokens = [src_tok.split(text) for text in inputs]
        unknown = [[t for t in dict.fromkeys(row) if t not in src_vocab] for row in tokens]
        if recipe.model.name == "hf":
            outs, hits = _hf.predict(task, model, data, tokens)
            return [Prediction(o, u, h) for o, u, h in zip(outs, unknown, hits, strict=True)]
        out: list[Prediction] = []
        with torch.inference_mode():
            for start in range(0, len(tokens), 256):
                chunk = tokens[start : start + 256]
                src = nn.utils.rnn.pad_sequence([torch.tensor(src_vocab.encode(t, add_eos=True)) for t in chunk],
                                                batch_first=True)
                mask = src != 0
                decoded = task.decode(model, src, mask)
                limits = task.limits(mask).tolist()
                out += [Prediction(tgt_vocab.decode(ids, strip_special=False),
                                   unknown[start + i], len(ids) >= limits[i])
                        for i, ids in enumerate(decoded)]
        return out

    def predict(self, recipe: Recipe, model: nn.Module, data: KindData, inputs: list[str],
                beam_size: int | None) -> list[str]:
        return [self.join(recipe, p.tokens) for p in self.predict_details(recipe, model, data, inputs, beam_size)]
