"""Task kinds: what a recipe trains. Each kind turns a validated recipe into data, a model and a task.

A kind is a subclass of :class:`Kind` that declares its ``task.args`` and ``model.args`` schemas and
the metrics its task reports, and implements loading data, building the model and task, and the
loaders. Kinds are found by the recipe's ``task.name`` in one registry (:func:`get_kind`): the
built-in ``seq2seq``, ``stress`` and ``digits_cycle`` (in :mod:`partwise.tasks`), anything added with
:func:`register_kind`, or a user's own ``package.module:Kind``, imported from the recipe's folder as
custom model factories are. Every kind, and the CLI, imports the recipe schema and this base from
:mod:`partwise.recipe`; no kind imports the CLI.

The registry names the built-in kinds by import path (as a plugin's entry point would), so this
layer never imports the kinds above it; a kind's module loads on first use.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from pydantic import BaseModel

from .._errors import ConfigError
from ._args import NoArgs
from ._resolve import import_object

if TYPE_CHECKING:
    from torch import nn

    from ._schema import Recipe

__all__ = ["KindData", "Kind", "declared_metrics", "default_best", "error_names", "training_subset", "get_kind",
           "kind_class", "register_kind", "kind_names"]

T = TypeVar("T")


def training_subset(recipe: Recipe, items: Sequence[T], unit: str) -> tuple[list[T], str | None]:
    """The recipe's ``data.subset`` of a training split's ``items`` (all of them when it has none), and
    a line for the run's log and report: ``"2,000 of 107,146 training words (data.subset seed 0)"``.
    Every kind calls this for its training split; ``unit`` names what an item is. A subset larger
    than the split raises :class:`~partwise.ConfigError` naming both sizes."""
    from partwise.data import subset_indices

    from .._errors import ConfigError

    subset = getattr(recipe.data, "subset", None)
    if subset is None:
        return list(items), None
    try:
        keep = subset_indices(len(items), size=subset.size, fraction=subset.fraction, seed=subset.seed)
    except ValueError as e:
        raise ConfigError([f"data.subset: {e}"]) from None
    line = f"{len(keep):,} of {len(items):,} training {unit} (data.subset seed {subset.seed})"
    return [items[i] for i in keep], line


@dataclass
class KindData:
    """What a kind's ``load_data`` returns: the train, dev and test sets, and ``extra`` facts for
    building the model (vocabularies, label names, sizes ...)."""

    train: Any
    dev: Any
    test: Any
    extra: dict[str, Any] = field(default_factory=dict)


class Kind:
    """A recipe's task kind. Subclass it, declare what the recipe may give, implement the five steps:

    * ``name``; ``task_args`` / ``model_args`` (per ``model.name``): pydantic schemas of
      ``task.args`` and ``model.args``, checked when the recipe is read (every problem at once);
      ``custom_models``: whether ``model.name`` may be a ``package.module:factory``;
    * ``metrics`` (or :meth:`metrics_for`): what ``build_task(...).evaluate`` returns, so that
      ``best_metric`` and ``early_stopping.metric`` are checked before training; ``best``: what
      ``training.best_metric: auto`` means;
    * ``load_data(recipe, artifacts) -> KindData`` (``artifacts``: what :meth:`artifacts` saved in the
      run folder, or ``None`` for a new run), ``artifacts(data) -> dict`` (JSON), ``build_model(recipe,
      data)``, ``build_task(recipe, data)`` (a :class:`partwise.Task`), ``loaders(recipe, data) ->
      (train, dev)`` and ``eval_loader(recipe, dataset)``;
    * optionally :meth:`check` (cheap checks before any data is read), :meth:`model_for_check` (the
      model without its data, so parts and plan are checked before the run folder is created) and
      :meth:`predict` (plain-text outputs for ``partwise predict``).

    ``decodes`` kinds (sequence outputs: ``--max-len``, ``--join``, ``eval:`` and teacher forcing
    keys) provide ``predict_details`` and ``join`` as the seq2seq kind does.
    """

    name: ClassVar[str] = ""
    task_args: ClassVar[type[BaseModel]] = NoArgs
    task_args_hint: ClassVar[str | None] = None  # said when task.args has an unknown key
    model_args: ClassVar[Mapping[str, type[BaseModel]]] = {}
    custom_models: ClassVar[bool] = False
    metrics: ClassVar[tuple[str, ...]] = ()
    best: ClassVar[tuple[str | None, str]] = (None, "min")
    decodes: ClassVar[bool] = False

    def metrics_for(self, recipe: Recipe) -> tuple[str, ...]:
        """The dev-set metrics this recipe's task reports (default: :attr:`metrics`)."""
        return tuple(self.metrics)

    def default_best(self, recipe: Recipe) -> tuple[str | None, str]:
        """``(metric, mode)`` that ``training.best_metric: auto`` means (default: :attr:`best`)."""
        return self.best

    def check(self, recipe: Recipe) -> None:
        """Cheap checks before any data is read (raise :class:`~partwise.ConfigError`)."""

    def model_for_check(self, recipe: Recipe) -> nn.Module | None:
        """The model built without reading data (``None``: only after the data is read)."""
        return None

    def checks_need_data(self, recipe: Recipe) -> bool:
        """Whether parts and plan can be checked only on the model built from the data."""
        return False

    def predict(self, recipe: Recipe, model: nn.Module, data: KindData, inputs: list[str],
                beam_size: int) -> list[str]:
        """Plain-text outputs of ``inputs`` (``partwise predict``)."""
        raise ConfigError([f"predict: runs of task {recipe.task.name!r} make no predictions"])

    def load_data(self, recipe: Recipe, artifacts: dict[str, Any] | None) -> KindData:
        raise NotImplementedError

    def artifacts(self, data: KindData) -> dict[str, Any]:
        raise NotImplementedError

    def build_model(self, recipe: Recipe, data: KindData) -> nn.Module:
        raise NotImplementedError

    def build_task(self, recipe: Recipe, data: KindData, max_len: int | None = None) -> Any:
        raise NotImplementedError

    def loaders(self, recipe: Recipe, data: KindData) -> tuple[Any, Any]:
        raise NotImplementedError

    def eval_loader(self, recipe: Recipe, dataset: Any) -> Any:
        raise NotImplementedError


_REGISTRY: dict[str, str | type[Kind]] = {  # built-in kinds, by import path (loaded on first use)
    "seq2seq": "partwise.tasks._seq2seq:Seq2SeqKind",
    "stress": "partwise.tasks._stress:StressKind",
    "digits_cycle": "partwise.tasks._digits:DigitsCycleKind",
}


def register_kind(name: str, kind: str | type[Kind]) -> None:
    """Make ``task.name: name`` mean ``kind`` (a :class:`Kind` subclass or its
    ``package.module:Class``); a built-in name cannot be taken."""
    if name in ("seq2seq", "stress", "digits_cycle") or ":" in name or not name:
        raise ConfigError([f"register_kind: {name!r} is a built-in kind or not a plain name"])
    _REGISTRY[name] = kind


def kind_names() -> list[str]:
    """The registered kinds' names."""
    return sorted(_REGISTRY)


def kind_class(name: str, path: str | None = None) -> type[Kind]:
    """The :class:`Kind` subclass ``task.name`` names: a registered name, or ``package.module:Class``
    imported with ``path`` (the recipe's folder) first on ``sys.path``."""
    spec: str | type[Kind] | None = _REGISTRY.get(name)
    if spec is None and ":" not in name:
        raise ConfigError([f"task.name: {name!r} is not a task kind; choose one of {kind_names()} or give your own "
                           "as 'package.module:Kind' (docs/guides/own-data.md, 'Your own task kind')"])
    found = spec if spec is not None else name
    docs = "docs/guides/own-data.md, 'Your own task kind'"
    cls = import_object(found, path if spec is None else None, "task.name", docs) if isinstance(found, str) else found
    if not (isinstance(cls, type) and issubclass(cls, Kind)):
        raise ConfigError([f"task.name: {name!r} is a {type(cls).__name__}, not a subclass of partwise.recipe.Kind"])
    return cls


def get_kind(name: str, path: str | None = None) -> Kind:
    """A new instance of the kind ``task.name`` names (see :func:`kind_class`)."""
    return kind_class(name, path)()


def declared_metrics(recipe: Recipe, kind: Kind | None = None) -> tuple[str, ...]:
    """The dev-set metrics the recipe's task reports."""
    return (kind or get_kind(recipe.task.name, recipe.task.path)).metrics_for(recipe)


def error_names(recipe: Any) -> tuple[str, str]:
    """The names of a seq2seq run's sequence and token error rates: G2P's WER/PER on CMUdict.

    Examples:
        >>> from types import SimpleNamespace as NS
        >>> error_names(NS(data=NS(name="pairs")))
        ('seq_error', 'token_error')
    """
    return ("wer", "per") if recipe.data.name == "cmudict" else ("seq_error", "token_error")


def default_best(recipe: Recipe) -> tuple[str | None, str]:
    """``(metric, mode)`` that ``training.best_metric: auto`` means for the recipe's task kind."""
    return get_kind(recipe.task.name, recipe.task.path).default_best(recipe)
