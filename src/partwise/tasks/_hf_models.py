"""Recipes with ``model: {name: hf, ...}``: a Hugging Face encoder–decoder in the ``seq2seq`` task kind.

``args: {path: DIR}`` loads a local ``from_pretrained`` directory (never a download);
``args: {config: {model_type: t5, ...}}`` builds a randomly initialised model from a config, with
``vocab_size`` and the special token ids of partwise's vocabularies filled in unless given;
``untie: true`` or a list of parts (``[encoder]``) gives those parts their own embedding copies.
``transformers`` is imported only when such a recipe runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._errors import ConfigError
from ..seq2seq import BOS, EOS, PAD

__all__ = ["check", "build_model", "build_task", "predict", "default_spec", "is_hf_model", "require_transformers"]



def require_transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise ConfigError(["model.name: 'hf' needs the transformers package: pip install 'partwise[hf]'"]) from None
    return transformers


def is_hf_model(model: nn.Module) -> bool:
    return type(model).__module__.startswith("transformers.") and callable(getattr(model, "save_pretrained", None))


def check(args: dict[str, Any]) -> None:
    """The file-system check of ``model.args`` before any data is read (keys, types and the one-of
    rule are the recipe schema's, ``partwise.recipe.HFArgs``): ``path`` is a ``from_pretrained`` folder."""
    if args.get("path") is not None and not (Path(str(args["path"])) / "config.json").is_file():
        raise ConfigError([f"model.args.path: {str(args['path'])!r} is not a from_pretrained directory (no "
                           "config.json); partwise never downloads models"])


def build_model(args: dict[str, Any], src_size: int, tgt_size: int) -> nn.Module:
    """The model of ``model.args``; partwise's vocabularies (PAD=0, BOS=2, EOS=3) share its id space."""
    check(args)
    tf = require_transformers()
    vocab = max(src_size, tgt_size)
    if "path" in args:
        tf.utils.logging.disable_progress_bar()  # one line per run, not a loading bar
        model = tf.AutoModelForSeq2SeqLM.from_pretrained(str(args["path"]), local_files_only=True)
        if model.config.vocab_size < vocab:
            raise ConfigError([f"model.args.path: the model's vocab_size {model.config.vocab_size} is smaller than "
                               f"the data's vocabulary ({vocab})"])
    else:
        cfg = dict(args["config"])
        model_type = cfg.pop("model_type")
        defaults = {"vocab_size": vocab, "pad_token_id": PAD, "bos_token_id": BOS, "eos_token_id": EOS,
                    "decoder_start_token_id": BOS}
        try:
            config = tf.AutoConfig.for_model(model_type, **{**defaults, **cfg})
            model = tf.AutoModelForSeq2SeqLM.from_config(config)
        except (ValueError, TypeError, KeyError) as e:
            raise ConfigError([f"model.args.config: {' '.join(str(e).split())[:300]}"]) from None
    untie = args.get("untie", False)
    if untie:
        from ..hf import untie_parts

        untie_parts(model, untie)
    return model


def default_spec(model: nn.Module) -> dict[str, list[str]] | None:
    """partwise.hf's part spec for an HF model (``None`` for any other model)."""
    if not is_hf_model(model):
        return None
    from ..hf import spec

    return spec(model)


def build_task(recipe: Any, data: Any, teacher_forcing: Any, max_len: int | None = None,
               metric_names: tuple[str, str] = ("wer", "per")) -> Any:
    from ..hf import Seq2SeqLMTask

    return Seq2SeqLMTask(teacher_forcing=teacher_forcing, label_smoothing=recipe.training.label_smoothing,
                         num_beams=recipe.eval.beam_size, max_new_tokens=max_len,
                         max_len_ratio=recipe.eval.max_len_ratio or 2.0, tgt_vocab=data.extra["tgt"],
                         metric_names=metric_names)


def predict(task: Any, model: nn.Module, data: Any, tokens: list[list[str]]) -> tuple[list[list[str]], list[bool]]:
    """Output tokens per input, and whether each hit the generation limit."""
    src_vocab, tgt_vocab = data.extra["src"], data.extra["tgt"]
    out, hits = [], []
    with torch.inference_mode():
        for start in range(0, len(tokens), 256):
            src = nn.utils.rnn.pad_sequence([torch.tensor(src_vocab.encode(t, add_eos=True))
                                             for t in tokens[start : start + 256]], batch_first=True)
            ids = task.generate_from(model, {"input_ids": src, "attention_mask": (src != PAD).long()})
            out += [tgt_vocab.decode(i) for i in ids]
            hits += [task.max_new_tokens is not None and len(i) >= task.max_new_tokens for i in ids]
    return out, hits
