"""Recipe schema: a recipe validated as a whole before any work, every problem reported at once.

Unknown keys, wrong types and impossible values are collected with their path in the file
(``plan.1.train.encoder: ...``); ``key=value`` overrides go through the same validation.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from .._errors import ConfigError
from .._optim._plan import length_problem, lr_problem

__all__ = ["Recipe", "apply_overrides", "validate", "dump", "FactoryResolver"]

FactoryResolver = Callable[[str, "str | None"], Callable[..., Any]]  # (model.name, model.path) -> factory


def _not_boolean(v: Any) -> Any:
    """YAML's ``true``/``false`` where a number belongs are refused, never read as 1 or 0."""
    if isinstance(v, bool):
        raise ValueError(f"{str(v).lower()} is a boolean; give a number")
    return v


Int = Annotated[int, BeforeValidator(_not_boolean)]
Float = Annotated[float, BeforeValidator(_not_boolean)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TaskConfig(_Strict):
    name: str = "seq2seq"  # what is trained: a registered kind or "package.module:Kind" (see partwise.recipe.Kind)
    args: dict[str, Any] = Field(default_factory=dict)  # that kind's options (checked by its task_args schema)
    path: str | None = None  # "package.module:Kind": the folder it is imported from (default: the recipe's)


class SubsetConfig(_Strict):
    """A seeded random subset of the training split (dev and test stay whole): give size or fraction."""

    size: Int | None = Field(None, ge=1)  # training items kept (cmudict: words, with all their pronunciations)
    fraction: Float | None = Field(None, gt=0.0, le=1.0)  # or this share of them (rounded up)
    seed: Int = 0  # one seed gives nested subsets: the 500-word subset lies inside the 2,000-word one

    @model_validator(mode="after")
    def _one_of(self) -> SubsetConfig:
        if (self.size is None) == (self.fraction is None):
            raise ValueError("give exactly one of size or fraction, e.g. subset: {size: 2000, seed: 0}")
        return self


# -- data: one schema per data kind, so a saved config holds only the keys of its own kind ---------
class CmudictData(_Strict):
    name: Literal["cmudict"] = "cmudict"  # the cmudict package's dictionary, standard CMU Sphinx split
    stress: bool = False  # keep stress digits (published G2P figures are without)
    limit: Int | None = Field(None, ge=1)  # smoke tests: the first N words of each split, alphabetical (not a
    # fair sample; use subset for small-data experiments)
    subset: SubsetConfig | None = None  # a seeded random subset of the training words
    pronunciations: Literal["all", "first"] = "all"  # train on every pronunciation of a word, or its first
    # (dev and test are scored against all of them either way)


class DigitsData(_Strict):
    name: Literal["digits"]  # scikit-learn's bundled 8x8 digits
    limit: Int | None = Field(None, ge=1)  # smoke tests: the first N rows of each split
    subset: SubsetConfig | None = None  # a seeded random subset of the training rows


class CharSide(_Strict):
    tokenize: Literal["char"]  # every character is a token (spaces included)
    lowercase: bool = False  # lowercase before splitting


class SpaceSide(_Strict):
    tokenize: Literal["space"]  # tokens are separated by whitespace
    lowercase: bool = False  # lowercase before splitting


class RegexSide(_Strict):
    tokenize: Literal["regex"]  # every match of pattern is a token (re.findall)
    pattern: str  # a regular expression without capturing groups, e.g. "<[A-Z]+>|\\S"
    lowercase: bool = False  # lowercase before splitting

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, v: str) -> str:
        from ..data import Tokenization

        Tokenization("regex", pattern=v)  # ValueError names the problem
        return v


class HFSide(_Strict):
    tokenize: Literal["hf"]  # a Hugging Face tokenizer from a local folder (partwise[hf])
    path: str  # the folder of tokenizer.save_pretrained (never a download)


Side = Annotated[CharSide | SpaceSide | RegexSide | HFSide, Field(discriminator="tokenize")]


def _side(default: str) -> Any:
    return Field(default_factory=lambda: {"char": CharSide, "space": SpaceSide}[default](tokenize=default))


class PairsData(_Strict):
    """Pair files (docs/guides/own-data.md, 'Pair files'): one source/target pair per line, TSV, CSV or JSON lines."""

    name: Literal["pairs"]
    train: str  # paths of the splits
    dev: str
    test: str | None = None  # optional
    format: Literal["auto", "tsv", "csv", "jsonl"] = "auto"  # auto: by extension (.tsv/.txt, .csv, .jsonl/.json)
    encoding: str = "utf-8"  # the files' text encoding (any name Python knows)
    fields: tuple[str, str] = ("source", "target")  # jsonl keys (and a csv header row)
    source: Side = _side("char")  # how each side is split into tokens
    target: Side = _side("space")  # (source default: char; target default: space)
    limit: Int | None = Field(None, ge=1)  # smoke tests: the first N pairs of each split (in file order)
    subset: SubsetConfig | None = None  # a seeded random subset of the training pairs

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, raw: Any) -> Any:
        """``source: char`` is short for ``source: {tokenize: char}``."""
        if not isinstance(raw, dict):
            return raw
        raw = dict(raw)
        for side in ("source", "target"):
            if isinstance(raw.get(side), str):
                raw[side] = {"tokenize": raw[side]}
        return raw

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, v: str) -> str:
        import codecs

        try:
            codecs.lookup(v)
        except LookupError:
            raise ValueError(f"{v!r} is not a text encoding Python knows; e.g. utf-8 or latin-1") from None
        return v


def _data_kind(raw: Any) -> str:
    return raw.get("name", "cmudict") if isinstance(raw, dict) else getattr(raw, "name", "cmudict")


Data = Annotated[Annotated[CmudictData, Tag("cmudict")] | Annotated[PairsData, Tag("pairs")]
                 | Annotated[DigitsData, Tag("digits")], Discriminator(_data_kind)]


class ModelConfig(_Strict):
    name: str = "gru"  # gru | transformer | hf | "package.module:factory" (see the docs, "Custom models")
    args: dict[str, Any] = Field(default_factory=dict)  # keyword arguments of the factory (typed per model)
    path: str | None = None  # custom factories: the folder their module is imported from (default: the
    # recipe's folder, written here when the recipe is read)


class InitConfig(_Strict):
    """Start a part from a part of another run or checkpoint (docs/guides/retargeting.md, 'Starting from
    another run')."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    from_: str = Field(alias="from")  # a run directory (then checkpoint is required) or a checkpoint folder
    part: str | None = None  # the part's name there (default: the same name)
    checkpoint: Literal["best", "latest"] | None = None  # which of the run's checkpoints
    vocab: Literal["remap", "same"] = "remap"  # a differing vocabulary: remap rows by token, or refuse


class ScheduleConfig(_Strict):
    warmup: Int = Field(0, ge=0)  # steps of linear warmup for parts that join in this phase
    decay: Literal["cosine", "linear", "constant"] = "constant"  # after warmup, to min_ratio x the LR at the end
    min_ratio: Float = Field(0.0, ge=0.0, le=1.0)  # the LR at the phase's end, as a share of its LR


class TeacherForcingConfig(_Strict):
    schedule: dict[str, Any] = Field(default_factory=lambda: {"name": "constant", "p": 1.0})  # the ratio's decay:
    # constant (p), linear (c, k, eps), exponential (k) or inverse_sigmoid (k) (Bengio et al. 2015)
    per: Literal["sequence", "token"] = "token"  # one coin per target sequence, or per token
    mode: Literal["exact", "two_pass"] = "exact"  # token by token, or two parallel passes (Mihaylova &
    # Martins 2019)
    sample: bool = False  # feed a sampled token instead of the argmax when not teacher-forced
    count_from: Literal["run", "phase"] = "run"  # step 0 of the schedule: the run's first step, or the
    # first step of the phase in force (a schedule given to a later phase then starts at its top)


class PhaseConfig(_Strict):
    name: str  # shown in logs, plots and the report
    epochs: Int | None = Field(None, ge=1)  # the phase's length: epochs or steps, exactly one
    steps: Int | None = Field(None, ge=1)
    train: dict[str, Float | dict[str, Any]]  # part -> lr, or part -> optimizer options
    optimizer: dict[str, Any] = Field(default_factory=dict)  # options for this phase's parts
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)  # the learning rate within the phase
    teacher_forcing: TeacherForcingConfig | None = None  # overrides the recipe's
    norm: Literal["eval", "train"] = "eval"  # frozen parts' BatchNorm statistics
    dropout: Literal["eval", "train"] = "eval"  # frozen parts' dropout

    @model_validator(mode="after")
    def _one_length(self) -> PhaseConfig:
        problems = []
        length = length_problem(self.epochs, self.steps)
        if length:
            problems.append(length)
        if not self.train:
            problems.append("train is empty: name at least one part, e.g. {decoder: 1.0e-3}")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @field_validator("train")
    @classmethod
    def _lrs(cls, v: dict[str, Any]) -> dict[str, Any]:
        for part, lr in v.items():
            problem = lr_problem(part, lr.get("lr") if isinstance(lr, dict) else lr)
            if problem:
                raise ValueError(f"{part}: {problem}")
        return v


class EarlyStoppingConfig(_Strict):
    metric: str = "wer"  # a dev metric of the task
    mode: Literal["min", "max"] = "min"  # whether lower or higher is better
    patience: Int = Field(3, ge=1)  # evaluations without improvement before the run stops


class TrainingConfig(_Strict):
    batch_size: Int = Field(64, ge=1)  # the global batch
    grad_clip: Float | dict[str, Float] | None = 1.0  # global max norm, or per part
    grad_accum: Int = Field(1, ge=1)  # micro-batches per optimizer step
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # autocast dtype; fp16 needs CUDA (loss scaling)
    device: str = "auto"  # auto: CUDA when there is one, else CPU; or cpu, cuda, cuda:1, ...
    on_nonfinite: Literal["skip", "stop"] = "skip"  # a NaN/inf loss or gradient: skip that step, or stop
    save_every: Int | None = Field(None, ge=1)  # extra checkpoints every N steps
    best_metric: str | None = "auto"  # keep the checkpoint with the best value of this val metric; auto:
    # the task's own (seq2seq: the sequence error rate, wer for cmudict), null: keep the latest only
    best_mode: Literal["min", "max"] = "min"  # whether lower or higher best_metric is better
    early_stopping: EarlyStoppingConfig | None = None  # stop when a dev metric stops improving
    label_smoothing: Float = Field(0.0, ge=0.0, lt=1.0)  # seq2seq: of the cross-entropy (Szegedy et al. 2016)
    tensorboard: bool = False  # also write tensorboard/ event files (partwise[tensorboard])
    cache: Literal["auto", "on", "off"] = "auto"  # frozen-encoder output cache (see partwise.Trainer)
    threads: Int | None = Field(None, ge=1)  # torch CPU threads (None: torch's default); 1 avoids
    # oversubscription when other jobs share a small machine
    guard: bool = False  # check that frozen parts stay bit-identical (FrozenGuard), re-armed at each phase
    max_minutes: Float | None = Field(None, gt=0)  # stop (with a checkpoint) after this wall time
    checkpoint_parts: Literal["all", "trained"] = "all"  # trained: checkpoints hold only the parts the plan
    # trains (adapters, a new head); the others come back from init: or the pretrained model, checked by digest
    average_last: Int | None = Field(None, ge=2)  # at the end, average the last N epoch-end checkpoints; the
    # average becomes best if it beats the best epoch on best_metric (dev)

    @model_validator(mode="after")
    def _average_needs_best(self) -> TrainingConfig:
        if self.average_last is not None and self.best_metric is None:
            raise ValueError("average_last needs best_metric (the dev metric that decides whether the average "
                             "becomes best); set best_metric or remove average_last")
        return self

    @field_validator("cache", mode="before")
    @classmethod
    def _yaml_booleans(cls, v: Any) -> Any:
        return {True: "on", False: "off"}.get(v, v) if isinstance(v, bool) else v  # YAML reads on/off as booleans


class AdaptersConfig(_Strict):
    """LoRA adapters (Hu et al. 2021) on chosen parts, through PEFT (partwise[peft]): each part P gets a
    part P.lora (or P.lora_A and P.lora_B) beside its base weights, which the plan freezes or trains."""

    parts: list[str] = Field(min_length=1)  # the parts to adapt, e.g. [decoder]
    type: Literal["lora"] = "lora"  # the adapter kind
    r: Int = Field(8, ge=1)  # the rank of each low-rank update
    alpha: Float = Field(16.0, gt=0)  # the update is scaled by alpha / r
    dropout: Float = Field(0.0, ge=0.0, lt=1.0)  # dropout on the adapted layer's input
    targets: list[str] | None = None  # module names to adapt (e.g. [q, v]); null: every nn.Linear of the parts
    split: bool = False  # parts P.lora_A and P.lora_B (LoRA+ learning-rate ratios as per-part LRs) instead of P.lora


class EvalConfig(_Strict):
    beam_size: Int = Field(1, ge=1)  # 1 = greedy
    max_len: Int | None = Field(None, ge=1)  # decoding limit in tokens; null: from the training targets
    # (1.5 x the longest, + 5)
    max_len_ratio: Float | None = Field(None, gt=0)  # instead: ceil(ratio x each row's source length) + 5


class Recipe(_Strict):
    """A whole training recipe (see ``recipes/*.yaml`` for commented examples)."""

    run_dir: str = "runs/run"  # the run folder (config, vocabularies, checkpoints, logs, report)
    seed: Int = 0  # seeds the model, data order and sampling; one seed, one run
    task: TaskConfig = Field(default_factory=TaskConfig)  # what is trained (the task kind)
    data: Data = Field(default_factory=CmudictData)  # the data, by data.name: cmudict, pairs or digits
    model: ModelConfig = Field(default_factory=ModelConfig)  # the model, by model.name, with its args
    init: dict[str, InitConfig] | None = None  # part -> where its starting weights come from
    parts: dict[str, str | list[str]] | None = None  # part -> selectors; default: top-level children
    optimizer: dict[str, Any] = Field(default_factory=lambda: {"name": "adamw", "weight_decay": 0.01})  # defaults
    # for every part: a torch.optim class name and its options
    separate: bool = False  # one optimizer per part instead of one with groups
    teacher_forcing: TeacherForcingConfig | None = None  # seq2seq: teacher forcing / scheduled sampling
    plan: list[PhaseConfig] = Field(min_length=1)  # the phases, in order: which parts train, how fast
    training: TrainingConfig = Field(default_factory=TrainingConfig)  # how the Trainer runs the plan
    adapters: AdaptersConfig | None = None  # LoRA adapters on parts (partwise[peft])
    eval: EvalConfig = Field(default_factory=EvalConfig)  # seq2seq: decoding for evaluation and predict


DOCS = {  # where the documentation describes each section's keys
    "data": "docs/recipes.md and docs/guides/own-data.md, 'Pair files'",
    "init": "docs/guides/retargeting.md, 'Starting from another run'",
    "model": "docs/recipes.md and docs/guides/own-data.md, 'Custom models'",
}
_TAGS = {"cmudict", "pairs", "digits", "char", "space", "regex", "hf"}  # union members pydantic names in paths


def _get(err: Any, key: str) -> Any:
    value = err.get("input")
    return value.get(key) if isinstance(value, dict) else value


_MEMBER = re.compile(r"[a-z-]+\[.*\]|int|float|str|bool|none|dict|list")  # union members in paths


def _errors_of(e: ValidationError) -> list[str]:
    """One line per key that failed (the alternatives of a union joined; a boolean given for a number
    said as such)."""
    by_path: dict[str, list[str]] = {}
    for line in _error_lines(e):
        path, msg = line.split(": ", 1)
        by_path.setdefault(path, []).append(msg)
    out = []
    for path, msgs in by_path.items():
        boolean = [m for m in msgs if "is a boolean; give a number" in m]
        out.append(f"{path}: {boolean[0] if boolean else ' or '.join(dict.fromkeys(msgs))}")
    return out


def _error_lines(e: ValidationError) -> list[str]:
    out = []
    for err in e.errors():
        loc = [str(p) for i, p in enumerate(err["loc"])
               if not (i > 0 and (str(p) in _TAGS or _MEMBER.fullmatch(str(p))))]
        path = ".".join(loc) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        docs = DOCS.get(loc[0] if loc else "", "docs/recipes.md")
        if err["type"] == "extra_forbidden":
            msg = f"unknown key (check the spelling; the keys are in the {docs})"
        elif err["type"] == "missing":
            msg = f"required (see the {docs})"
        elif err["type"] == "union_tag_invalid" and loc == ["data"]:
            msg = f"unknown data kind {_get(err, 'name')!r}; choose one of cmudict, pairs, digits (see the {docs})"
        elif err["type"] == "union_tag_invalid" and loc[-1:] in (["source"], ["target"]):
            msg = f"unknown tokenize {_get(err, 'tokenize')!r}; choose one of char, space, regex, hf (see the {docs})"
        elif err["type"] == "union_tag_invalid":
            msg = f"{msg} (see the {docs})"
        out.append(f"{path}: {msg}")
    return out


def validate(raw: Any, source: str, resolve_factory: FactoryResolver | None = None) -> Recipe:
    """A :class:`Recipe` from parsed YAML, or :class:`~partwise.ConfigError` listing every problem:
    the schema's, and those of ``task.args`` and ``model.args`` (:func:`args_problems`; a custom
    ``package.module:factory`` model is checked against its signature when ``resolve_factory`` finds
    it). ``training.best_metric: auto`` becomes the task's own metric."""
    from ._args import args_problems
    from ._kinds import kind_class

    if not isinstance(raw, dict):
        raise ConfigError([f"(top level): expected a mapping of keys, got {type(raw).__name__}"], source)
    errors: list[str] = []
    recipe = None
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as e:
        errors += _errors_of(e)
    task: dict[str, Any] = raw["task"] if isinstance(raw.get("task"), dict) else {}
    kind = None
    try:
        kind = kind_class(str(task.get("name", "seq2seq")), task.get("path"))
    except ConfigError as e:
        errors += e.errors
    if kind is not None:
        errors += args_problems(raw, kind, resolve_factory)
    if errors or recipe is None or kind is None:
        raise ConfigError(errors, source)
    return _resolve(recipe, kind())


def build_teacher_forcing(cfg: TeacherForcingConfig | None, where: str) -> Any:
    """The :class:`partwise.seq2seq.TeacherForcing` a recipe's ``teacher_forcing:`` key describes
    (``None`` for none); a :class:`~partwise.ConfigError` naming ``where`` otherwise."""
    if cfg is None:
        return None
    from ..seq2seq import TeacherForcing, tf_schedule_from_dict

    try:
        return TeacherForcing(tf_schedule_from_dict(cfg.schedule), per=cfg.per, mode=cfg.mode, sample=cfg.sample,
                              count_from=cfg.count_from)
    except (TypeError, ValueError) as e:
        raise ConfigError([f"{where}: {e}"]) from None


def _decodes(recipe: Recipe) -> bool:
    from ._kinds import kind_class

    return kind_class(recipe.task.name, recipe.task.path).decodes


def _resolve(recipe: Recipe, kind: Any) -> Recipe:
    if recipe.training.best_metric != "auto":
        return recipe
    metric, mode = kind.default_best(recipe)
    training = recipe.training.model_copy(update={"best_metric": metric, "best_mode": mode})
    return recipe.model_copy(update={"training": training})


def apply_overrides(raw: Any, overrides: list[str], source: str) -> Any:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML; list items by index; a key that holds a
    dot, such as the part ``decoder.lora``, is matched where it exists: ``plan.0.train.decoder.lora=1e-3``)."""
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
        node, parts, i = out, key.split("."), 0
        while True:
            # the longest dotted run that names a key already here (part names may hold dots: decoder.lora)
            here = node if isinstance(node, dict) else {}
            j = next((j for j in range(len(parts), i + 1, -1) if ".".join(parts[i:j]) in here), i + 1)
            k = ".".join(parts[i:j])
            if j == len(parts):
                if isinstance(node, list):
                    if not (k.isdigit() and int(k) < len(node)):
                        errors.append(f"override {item!r}: no item {k} in a list of {len(node)}")
                    else:
                        node[int(k)] = parsed
                else:
                    node[k] = parsed
                break
            nxt: Any = None
            if isinstance(node, list) and k.isdigit() and int(k) < len(node):
                nxt = node[int(k)]
            elif isinstance(node, dict):
                nxt = node.setdefault(k, {})
            if not isinstance(nxt, dict | list):
                errors.append(f"override {item!r}: {'.'.join(parts[:j])} is not a section")
                break
            node, i = nxt, j
    if errors:
        raise ConfigError(errors, source)
    return out


def dump(recipe: Recipe) -> str:
    """The resolved recipe (defaults filled in) as YAML: only the keys that apply to its kinds
    (``init`` and a custom factory's ``model.path`` only when there are such)."""
    out = recipe.model_dump(mode="json", by_alias=True)
    if out["init"] is None:
        del out["init"]
    if out["adapters"] is None:
        del out["adapters"]
    if out["model"]["path"] is None:
        del out["model"]["path"]
    if out["task"]["path"] is None:
        del out["task"]["path"]
    if not _decodes(recipe):  # decoding options and teacher forcing are for kinds that decode sequences
        del out["eval"]
        if out["teacher_forcing"] is None:
            del out["teacher_forcing"]
    return yaml.safe_dump(out, sort_keys=False)
