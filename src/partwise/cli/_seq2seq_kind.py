"""The ``seq2seq`` task kind: CMUdict G2P or TSV pairs with a reference encoder–decoder."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from .._errors import ConfigError
from ..data import BucketBatchSampler, Seq2SeqDataset, Vocab, collate, make_g2p_datasets, read_pairs
from ..seq2seq import Seq2SeqTask, gru_seq2seq, transformer_seq2seq
from . import _hf
from ._build import teacher_forcing
from ._config import Recipe
from ._kinds import KindData

__all__ = ["Seq2SeqKind", "model_factory"]

FACTORIES = {"gru": gru_seq2seq, "transformer": transformer_seq2seq}


def model_factory(name: str, factories: dict[str, Any]) -> Any:
    """A factory by registered name, or a user's ``package.module:factory``."""
    if name in factories:
        return factories[name]
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise ConfigError([f"model.name: cannot import {name!r} ({e})"]) from None
    raise ConfigError([f"model.name: {name!r} is not one of {sorted(factories)} or 'package.module:factory'"])


def eval_loader(dataset: Seq2SeqDataset | None, batch_size: int = 256) -> DataLoader | None:
    if dataset is None:
        return None
    return DataLoader(dataset, collate_fn=collate,
                      batch_sampler=BucketBatchSampler(dataset.lengths, batch_size, shuffle=False))


class Seq2SeqKind:
    """Sequence to sequence: ``data.name`` cmudict or tsv; models gru, transformer or your factory
    (called as ``factory(src_vocab_size, tgt_vocab_size, **model.args)``)."""

    def check(self, recipe: Recipe) -> None:
        if recipe.data.name not in ("cmudict", "tsv"):
            raise ConfigError([f"data.name: {recipe.data.name!r} does not fit task 'seq2seq'; use cmudict or tsv"])
        if recipe.data.name == "tsv":
            missing = [(split, path) for split in ("train", "dev", "test")
                       if (path := getattr(recipe.data, split)) and not Path(path).is_file()]
            if missing:
                raise ConfigError([f"data.{split}: {path!r} {'is not a file' if Path(path).exists() else 'not found'}; "
                                   "give a TSV file (source<TAB>target per line)" for split, path in missing])
        if recipe.model.name == "hf":  # a Hugging Face encoder-decoder (partwise[hf]; see cli/_hf.py)
            return _hf.check(recipe.model.args)
        model_factory(recipe.model.name, FACTORIES)

    def model_for_check(self, recipe: Recipe) -> nn.Module:
        """The recipe's model with stand-in vocabulary sizes (part names do not depend on them)."""
        if recipe.model.name == "hf":
            return _hf.build_model(recipe.model.args, 1, 1)  # the data's vocabulary is checked when it is read
        return self.build_model(recipe, KindData(None, None, None, {"src": range(40), "tgt": range(80)}))

    def load_data(self, recipe: Recipe, artifacts: dict[str, Any] | None) -> KindData:
        d = recipe.data
        vocabs = None if artifacts is None else (Vocab.from_dict(artifacts["src"]), Vocab.from_dict(artifacts["tgt"]))
        if d.name == "cmudict":
            g = make_g2p_datasets(stress=d.stress, limit=d.limit)
            if vocabs is not None and (vocabs[0] != g.src_vocab or vocabs[1] != g.tgt_vocab):
                raise ConfigError(["data: the run's saved vocabulary differs from this data's; use the run's own data settings"])
            return KindData(g.train, g.dev, g.test, {"src": g.src_vocab, "tgt": g.tgt_vocab})
        pairs = {split: read_pairs(path, tokenize=d.tokenize, tgt_tokenize=d.tgt_tokenize) if path else None
                 for split, path in (("train", d.train), ("dev", d.dev), ("test", d.test))}
        if d.limit:
            pairs = {k: (v[: d.limit] if v else v) for k, v in pairs.items()}
        if vocabs is None:
            vocabs = (Vocab.build(s for s, _ in pairs["train"]), Vocab.build(t for _, t in pairs["train"]))
        sets = {k: Seq2SeqDataset(v, *vocabs) if v else None for k, v in pairs.items()}
        return KindData(sets["train"], sets["dev"], sets["test"], {"src": vocabs[0], "tgt": vocabs[1]})

    def artifacts(self, data: KindData) -> dict[str, Any]:
        return {"src": data.extra["src"].to_dict(), "tgt": data.extra["tgt"].to_dict()}

    def build_model(self, recipe: Recipe, data: KindData) -> nn.Module:
        torch.manual_seed(recipe.seed)
        if recipe.model.name == "hf":
            return _hf.build_model(recipe.model.args, len(data.extra["src"]), len(data.extra["tgt"]))
        factory = model_factory(recipe.model.name, FACTORIES)
        try:
            return factory(len(data.extra["src"]), len(data.extra["tgt"]), **recipe.model.args)
        except (TypeError, ValueError) as e:
            raise ConfigError([f"model.args: {e}"]) from None

    def build_task(self, recipe: Recipe, data: KindData) -> Any:
        if recipe.model.name == "hf":
            return _hf.build_task(recipe, data, teacher_forcing(recipe.teacher_forcing, "teacher_forcing"))
        return Seq2SeqTask(teacher_forcing=teacher_forcing(recipe.teacher_forcing, "teacher_forcing"),
                           label_smoothing=recipe.training.label_smoothing, tgt_vocab=data.extra["tgt"],
                           beam_size=recipe.eval.beam_size, max_len_ratio=recipe.eval.max_len_ratio)

    def loaders(self, recipe: Recipe, data: KindData) -> tuple[DataLoader, DataLoader | None]:
        train = DataLoader(data.train, collate_fn=collate, batch_sampler=BucketBatchSampler(
            data.train.lengths, recipe.training.batch_size, seed=recipe.seed))
        return train, eval_loader(data.dev)

    def eval_loader(self, recipe: Recipe, dataset: Any) -> DataLoader | None:
        return eval_loader(dataset)

    def predict(self, recipe: Recipe, model: nn.Module, data: KindData, words: list[str], beam_size: int | None) -> list[str]:
        src_vocab, tgt_vocab = data.extra["src"], data.extra["tgt"]
        task = self.build_task(recipe, data)
        if beam_size:
            task.beam_size = beam_size
        tokens = [list(w.lower()) if recipe.data.tokenize == "char" else w.split() for w in words]
        if recipe.model.name == "hf":
            return _hf.predict(task, model, data, tokens)
        out = []
        with torch.inference_mode():
            for start in range(0, len(tokens), 256):
                chunk = tokens[start : start + 256]
                src = nn.utils.rnn.pad_sequence([torch.tensor(src_vocab.encode(t, add_eos=True)) for t in chunk],
                                                batch_first=True)
                out += [" ".join(tgt_vocab.decode(ids)) for ids in task.decode(model, src, src != 0)]
        return out
