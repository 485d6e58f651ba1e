"""Recipe schema: a YAML file validated as a whole before any work, every problem reported at once.

Unknown keys, wrong types and impossible values are collected with their path in the file
(``plan.1.train.encoder: ...``); ``key=value`` overrides go through the same validation.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .._errors import ConfigError

__all__ = ["Recipe", "load_recipe", "apply_overrides", "validate", "dump"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TaskConfig(_Strict):
    name: Literal["seq2seq", "stress", "digits_cycle"] = "seq2seq"  # what is trained (see partwise.cli._kinds)
    args: dict[str, Any] = Field(default_factory=dict)  # options of that task kind


class DataConfig(_Strict):
    name: Literal["cmudict", "tsv", "digits"] = "cmudict"  # CMUdict, your own TSV files, scikit-learn digits
    stress: bool = False  # cmudict: keep stress digits (published G2P figures are without)
    limit: int | None = Field(None, ge=1)  # keep only the first N words of each split (quick runs)
    train: str | None = None  # tsv: paths of the splits (source<TAB>target per line)
    dev: str | None = None
    test: str | None = None
    tokenize: Literal["char", "space"] = "char"  # tsv: source tokenisation
    tgt_tokenize: Literal["char", "space"] = "space"  # tsv: target tokenisation

    @model_validator(mode="after")
    def _tsv_needs_paths(self) -> DataConfig:
        if self.name == "tsv" and not (self.train and self.dev):
            raise ValueError("data.name 'tsv' needs data.train and data.dev file paths")
        return self


class ModelConfig(_Strict):
    name: str = "gru"  # gru | transformer | "package.module:factory" (called with src_vocab, tgt_vocab, **args)
    args: dict[str, Any] = Field(default_factory=dict)  # keyword arguments of the factory


class ScheduleConfig(_Strict):
    warmup: int = Field(0, ge=0)  # steps of linear warmup for parts that join in this phase
    decay: Literal["cosine", "linear", "constant"] = "constant"
    min_ratio: float = Field(0.0, ge=0.0, le=1.0)


class TeacherForcingConfig(_Strict):
    schedule: dict[str, Any] = Field(default_factory=lambda: {"name": "constant", "p": 1.0})
    per: Literal["sequence", "token"] = "token"
    mode: Literal["exact", "two_pass"] = "exact"
    sample: bool = False


class PhaseConfig(_Strict):
    name: str
    epochs: int | None = Field(None, ge=1)
    steps: int | None = Field(None, ge=1)
    train: dict[str, float | dict[str, Any]]  # part -> lr, or part -> optimizer options
    optimizer: dict[str, Any] = Field(default_factory=dict)  # options for this phase's parts
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    teacher_forcing: TeacherForcingConfig | None = None  # overrides the recipe's
    norm: Literal["eval", "train"] = "eval"  # frozen parts' BatchNorm statistics
    dropout: Literal["eval", "train"] = "eval"

    @model_validator(mode="after")
    def _one_length(self) -> PhaseConfig:
        problems = []
        if (self.epochs is None) == (self.steps is None):
            problems.append("give exactly one of epochs or steps")
        if not self.train:
            problems.append("train is empty: name at least one part, e.g. {decoder: 1.0e-3}")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @field_validator("train")
    @classmethod
    def _lrs(cls, v: dict[str, Any]) -> dict[str, Any]:
        for part, lr in v.items():
            value = lr.get("lr") if isinstance(lr, dict) else lr
            if value is not None and value < 0:
                raise ValueError(f"learning rate of {part!r} is {value}; it must be >= 0")
        return v


class EarlyStoppingConfig(_Strict):
    metric: str = "wer"
    mode: Literal["min", "max"] = "min"
    patience: int = Field(3, ge=1)


class TrainingConfig(_Strict):
    batch_size: int = Field(64, ge=1)  # the global batch
    grad_clip: float | dict[str, float] | None = 1.0  # global max norm, or per part
    grad_accum: int = Field(1, ge=1)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    device: str = "auto"
    on_nonfinite: Literal["skip", "stop"] = "skip"
    save_every: int | None = Field(None, ge=1)  # extra checkpoints every N steps
    best_metric: str | None = "wer"  # keep the checkpoint with the best value of this val metric
    best_mode: Literal["min", "max"] = "min"
    early_stopping: EarlyStoppingConfig | None = None
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    tensorboard: bool = False
    cache: Literal["auto", "on", "off"] = "auto"  # frozen-encoder output cache (see partwise.Trainer)
    threads: int | None = Field(None, ge=1)  # torch CPU threads (None: torch's default); 1 avoids
    # oversubscription when other jobs share a small machine
    guard: bool = False  # check that frozen parts stay bit-identical (FrozenGuard), re-armed at each phase
    max_minutes: float | None = Field(None, gt=0)  # stop (with a checkpoint) after this wall time

    @field_validator("cache", mode="before")
    @classmethod
    def _yaml_booleans(cls, v: Any) -> Any:
        return {True: "on", False: "off"}.get(v, v) if isinstance(v, bool) else v  # YAML reads on/off as booleans


class EvalConfig(_Strict):
    beam_size: int = Field(1, ge=1)  # 1 = greedy
    max_len_ratio: float = Field(2.0, gt=0)


class Recipe(_Strict):
    """A whole training recipe (see ``recipes/*.yaml`` for commented examples)."""

    run_dir: str = "runs/run"
    seed: int = 0
    task: TaskConfig = Field(default_factory=TaskConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    parts: dict[str, str | list[str]] | None = None  # part -> selectors; default: top-level children
    optimizer: dict[str, Any] = Field(default_factory=lambda: {"name": "adamw", "weight_decay": 0.01})
    separate: bool = False  # one optimizer per part instead of one with groups
    teacher_forcing: TeacherForcingConfig | None = None
    plan: list[PhaseConfig] = Field(min_length=1)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)


def _errors_of(e: ValidationError) -> list[str]:
    out = []
    for err in e.errors():
        path = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see recipes/g2p.yaml for the keys)"
        out.append(f"{path}: {msg}")
    return out


def validate(raw: Any, source: str) -> Recipe:
    """A :class:`Recipe` from parsed YAML, or :class:`~partwise.ConfigError` listing every problem."""
    if not isinstance(raw, dict):
        raise ConfigError([f"(top level): expected a mapping of keys, got {type(raw).__name__}"], source)
    try:
        return Recipe.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_errors_of(e), source) from None


def load_recipe(path: str | Path, overrides: list[str] = ()) -> tuple[Recipe, dict[str, Any]]:
    """Read, override and validate a recipe; returns it and the raw (overridden) mapping."""
    from ._runfiles import read_yaml

    p = Path(path)
    if not p.exists():
        raise ConfigError([f"recipe file not found: {str(p)!r} (give a path such as recipes/g2p.yaml)"])
    if not p.is_file():
        raise ConfigError([f"recipe {str(p)!r} is a folder, not a file (give a path such as recipes/g2p.yaml)"])
    raw = read_yaml(p, "fix the recipe (see recipes/g2p.yaml for a commented example)")
    raw = apply_overrides(raw if raw is not None else {}, overrides, str(p))
    return validate(raw, str(p)), raw


def apply_overrides(raw: Any, overrides: list[str], source: str) -> Any:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML; list items by index)."""
    out = copy.deepcopy(raw)
    errors = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            errors.append(f"override {item!r}: write key=value, e.g. training.batch_size=32")
            continue
        try:
            parsed = yaml.safe_load(value) if value else None
        except yaml.YAMLError:
            parsed = value
        node, parts = out, key.split(".")
        for i, k in enumerate(parts[:-1]):
            nxt: Any = None
            if isinstance(node, list) and k.isdigit() and int(k) < len(node):
                nxt = node[int(k)]
            elif isinstance(node, dict):
                nxt = node.setdefault(k, {})
            if not isinstance(nxt, dict | list):
                errors.append(f"override {item!r}: {'.'.join(parts[: i + 1])} is not a section")
                break
            node = nxt
        else:
            last = parts[-1]
            if isinstance(node, list):
                if not (last.isdigit() and int(last) < len(node)):
                    errors.append(f"override {item!r}: no item {last} in a list of {len(node)}")
                    continue
                node[int(last)] = parsed
            else:
                node[last] = parsed
    if errors:
        raise ConfigError(errors, source)
    return out


def dump(recipe: Recipe) -> str:
    """The resolved recipe (defaults filled in) as YAML."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
