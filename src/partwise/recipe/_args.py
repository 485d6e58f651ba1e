"""Typed schemas for the free-form ``args`` of a recipe: ``task.args`` per task kind, ``model.args`` per
model. Unknown keys are rejected and every problem is reported at once, with its path.

Each task kind declares which schema checks its ``task.args`` and each of its models' ``model.args``
(:class:`partwise.recipe.Kind`); the built-in ones are here. ``model.args`` keys, per kind and model:

* ``seq2seq`` / ``gru``: emb, hidden, layers, enc_layers, bidirectional, attention, dropout, input_feeding
* ``seq2seq`` / ``transformer``: d_model, heads, enc_layers, dec_layers, ff, dropout, max_len
* ``seq2seq`` / ``hf``: path or config, untie
* ``seq2seq`` / ``package.module:factory``: the factory's own keyword arguments (from its signature)
* ``stress`` / ``gru``: hidden, dropout
* ``digits_cycle`` / ``mlp``: latent, hidden, dropout

``task.args``: ``seq2seq`` takes none (start parts from another run with ``init:``); ``stress``:
``encoder`` (``g2p_en`` | ``scratch`` | ``run:PATH``), ``max_syllables``; ``digits_cycle``:
``autoencoder_phases``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from .._errors import ConfigError

__all__ = ["args_problems", "signature_schema", "NoArgs", "Seq2SeqTaskArgs", "StressTaskArgs", "DigitsTaskArgs",
           "GRUArgs", "TransformerArgs", "HFArgs", "StressModelArgs", "DigitsModelArgs"]

SEQ2SEQ_HINT = ("task 'seq2seq' takes no task.args; to start a part from another run use init: "
                "(docs/guides/retargeting.md, 'Starting from another run')")


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


class NoArgs(_Args):
    """``task.args`` of a kind that takes none."""


class Seq2SeqTaskArgs(NoArgs):
    """``task.args`` of ``seq2seq``: none."""


class StressTaskArgs(_Args):
    encoder: str = "g2p_en"  # g2p_en | scratch | run:PATH (a partwise G2P run)
    max_syllables: int = Field(8, ge=2)  # classes of the syllable-count head (words with more are clipped)


class DigitsTaskArgs(_Args):
    autoencoder_phases: list[str] = Field(default_factory=lambda: ["autoencoder"])  # phases that train
    # E and D as an autoencoder; the others train the generator through the frozen encoder


class GRUArgs(_Args):
    emb: int = Field(128, ge=1)  # embedding size (both sides)
    hidden: int = Field(256, ge=1)  # GRU hidden size (the decoder's; a bidirectional encoder's halves)
    layers: int = Field(1, ge=1)  # decoder layers
    bidirectional: bool = True  # bidirectional encoder
    attention: Literal["additive", "dot"] | None = "additive"  # Bahdanau (additive) or Luong (dot); null: none
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    enc_layers: int | None = Field(None, ge=1)  # encoder layers (default: layers); at least the decoder's
    input_feeding: bool = False  # the decoder's RNN reads its previous attentional vector (needs attention)


class TransformerArgs(_Args):
    d_model: int = Field(256, ge=1)  # model width
    heads: int = Field(4, ge=1)  # attention heads (d_model divisible by heads)
    enc_layers: int = Field(3, ge=1)
    dec_layers: int = Field(3, ge=1)
    ff: int = Field(1024, ge=1)  # feed-forward width
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    max_len: int = Field(256, ge=1)  # longest sequence of the sinusoidal position table


class HFArgs(_Args):
    path: str | None = None  # a local from_pretrained folder
    config: dict[str, Any] | None = None  # or a config with model_type, for a random initialisation
    untie: bool | list[str] = False  # parts that get their own copy of a shared tensor (true: encoder, head)

    @model_validator(mode="after")
    def _one_source(self) -> HFArgs:
        """The one rule for ``model.args`` of ``hf``: exactly one of path and config, config with model_type
        (whether ``path`` is a ``from_pretrained`` folder is the kind's check, on the file system)."""
        if (self.path is None) == (self.config is None):
            raise ValueError("give exactly one of path (a local from_pretrained directory) or config "
                             "(e.g. {model_type: t5, d_model: 256})")
        if self.config is not None and not self.config.get("model_type"):
            raise ValueError("config must be a mapping with model_type, e.g. {model_type: t5, d_model: 256}")
        return self


class StressModelArgs(_Args):
    hidden: int = Field(256, ge=1)  # GRU hidden size (g2p_en's encoder: 256)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)


class DigitsModelArgs(_Args):
    latent: int = Field(16, ge=1)  # size of the code E produces
    hidden: int = Field(64, ge=1)  # MLP hidden width
    dropout: float = Field(0.1, ge=0.0, lt=1.0)


def signature_schema(fn: Callable[..., Any], skip: int = 2) -> type[BaseModel] | None:
    """A schema of ``fn``'s keyword arguments after the first ``skip`` (the vocabulary sizes), typed by
    its annotations; ``None`` when it takes ``**kwargs`` (anything goes).

    Examples:
        >>> def factory(src_vocab, tgt_vocab, hidden: int = 64): ...
        >>> signature_schema(factory)(hidden="12").hidden
        12
    """
    params = list(inspect.signature(fn).parameters.values())[skip:]
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    fields: dict[str, Any] = {}
    hints = _annotations(fn)
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.POSITIONAL_ONLY):
            continue
        default = ... if p.default is p.empty else p.default
        fields[p.name] = (hints.get(p.name, Any), default)
    return create_model(f"{getattr(fn, '__name__', 'factory')}_args", __config__=_Args.model_config, **fields)


def _annotations(fn: Callable[..., Any]) -> dict[str, Any]:
    try:
        import typing

        return typing.get_type_hints(fn)
    except Exception:  # noqa: BLE001 - unresolvable annotations: fall back to untyped arguments
        return {}


def _problems(schema: type[BaseModel], args: Any, where: str, hint: str) -> list[str]:
    if not isinstance(args, dict):
        return [f"{where}: expected a mapping of keys, got {type(args).__name__}"]
    try:
        schema.model_validate(args)
    except ValidationError as e:
        out = []
        for err in e.errors():
            path = ".".join(str(p) for p in (where, *err["loc"]))
            if err["type"] == "extra_forbidden":
                out.append(f"{path}: unknown key; {hint}")
            elif err["type"] == "missing":
                out.append(f"{path}: required; {hint}")
            else:
                out.append(f"{path}: {err['msg'].removeprefix('Value error, ')}")
        return out
    return []


def _keys(schema: type[BaseModel]) -> str:
    return f"keys are {', '.join(schema.model_fields) or '(none)'}"


def args_problems(raw: dict[str, Any], kind: Any,
                  factory: Callable[[str, str | None], Callable[..., Any]] | None = None) -> list[str]:
    """Every problem of ``task.args`` and ``model.args`` in a raw recipe mapping, against the schemas
    the task kind (a :class:`~partwise.recipe.Kind` subclass) declares.

    ``factory(name, path)`` resolves a custom ``package.module:factory`` (its signature gives the
    schema) for kinds that take custom models; ``None``: custom factories are not checked here.

    Examples:
        >>> class Stress:
        ...     task_args, task_args_hint, model_args, custom_models = StressTaskArgs, None, {}, False
        >>> args_problems({"task": {"args": {"encoderr": "g2p_en"}}}, Stress)[0].split(";")[0]
        'task.args.encoderr: unknown key'
    """
    task: dict[str, Any] = raw["task"] if isinstance(raw.get("task"), dict) else {}
    model: dict[str, Any] = raw["model"] if isinstance(raw.get("model"), dict) else {}
    name = model.get("name", "gru")
    out = _problems(kind.task_args, task.get("args", {}), "task.args", kind.task_args_hint or _keys(kind.task_args))
    schema: type[BaseModel] | None = kind.model_args.get(name) if isinstance(name, str) else None
    if schema is None and kind.custom_models and isinstance(name, str) and ":" in name and factory is not None:
        try:
            schema = signature_schema(factory(name, model.get("path")))
        except ConfigError as e:
            return out + e.errors
        if schema is None:
            return out
    if schema is not None:
        out += _problems(schema, model.get("args", {}), "model.args", f"model {name!r}: {_keys(schema)}")
    return out
