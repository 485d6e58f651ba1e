"""Task kinds: what a recipe trains. Each kind turns a validated recipe into data, a model and a task.

A kind is any object with the methods of :class:`TaskKind` (composition, no base class). The CLI
picks one by the recipe's ``task.name``; the built-in kinds are ``seq2seq`` (in the CLI, over
:mod:`partwise.seq2seq` and :mod:`partwise.hf`) and ``stress`` and ``digits_cycle`` (in
:mod:`partwise.tasks`). Every kind, and the CLI, imports the recipe schema and this protocol from
:mod:`partwise.recipe`; no kind imports the CLI.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from torch import nn

    from ._schema import Recipe

__all__ = ["KindData", "TaskKind", "declared_metrics", "default_best", "error_names", "METRICS", "training_subset"]

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


class TaskKind(Protocol):
    """What a recipe's task kind provides.

    * ``load_data(recipe, artifacts) -> KindData`` — ``artifacts`` is what ``artifacts(data)`` saved in
      the run directory (e.g. vocabularies), or ``None`` for a new run;
    * ``artifacts(data) -> dict`` — JSON-serialisable, saved as ``run_dir/artifacts.json``;
    * ``build_model(recipe, data) -> nn.Module``;
    * ``build_task(recipe, data) -> Task`` (loss and evaluate; see :class:`partwise.Task`);
    * ``loaders(recipe, data) -> (train_loader, dev_loader)`` and ``eval_loader(recipe, dataset)``;
    * ``check(recipe) -> None`` — cheap checks before any data is read (raise ``ConfigError``);
    * optionally ``model_for_check(recipe) -> nn.Module`` — the model built without reading data, so
      parts and plan are validated before the run directory is created;
    * optionally ``predict(recipe, model, data, words, beam_size) -> list[str]``;
    * optionally ``metrics`` (or ``metrics_for(recipe)``): the names of what
      ``build_task(...).evaluate`` returns (the trainer logs them as ``dev_<name>``), so that
      ``best_metric`` and ``early_stopping.metric`` are checked before training; :data:`METRICS`
      declares them for the built-in kinds.

    ``training.best_metric: auto`` resolves to :func:`default_best` of the recipe.
    """

    def load_data(self, recipe: Recipe, artifacts: dict[str, Any] | None) -> KindData: ...

    def artifacts(self, data: KindData) -> dict[str, Any]: ...

    def build_model(self, recipe: Recipe, data: KindData) -> nn.Module: ...

    def build_task(self, recipe: Recipe, data: KindData) -> Any: ...

    def loaders(self, recipe: Recipe, data: KindData) -> tuple[Any, Any]: ...

    def eval_loader(self, recipe: Recipe, dataset: Any) -> Any: ...

    def check(self, recipe: Recipe) -> None: ...


METRICS = {  # what each built-in kind's task.evaluate returns (tests/cli check them against real runs)
    "seq2seq": ("loss", "token_acc", "seq_error", "token_error", "at_max_len"),  # cmudict: wer, per
    "stress": ("loss", "stress_acc", "syllables_acc", "both_acc", "majority_stress_acc", "majority_syllables_acc"),
    "digits_cycle": ("recon_mse", "cycle_loss", "pixel_mse", "untrained_cycle_loss", "untrained_pixel_mse"),
}


def declared_metrics(name: str, kind: Any, recipe: Any = None) -> tuple[str, ...] | None:
    """The dev-set metrics a kind's task reports (``None``: not declared, not checked)."""
    if recipe is not None and hasattr(kind, "metrics_for"):
        return tuple(kind.metrics_for(recipe))
    declared = getattr(kind, "metrics", None)
    return tuple(declared) if declared is not None else METRICS.get(name)


def error_names(recipe: Any) -> tuple[str, str]:
    """The names of a seq2seq run's sequence and token error rates: G2P's WER/PER on CMUdict.

    >>> from types import SimpleNamespace as NS
    >>> error_names(NS(data=NS(name="pairs")))
    ('seq_error', 'token_error')
    """
    return ("wer", "per") if recipe.data.name == "cmudict" else ("seq_error", "token_error")


def default_best(recipe: Any) -> tuple[str | None, str]:
    """``(metric, mode)`` that ``training.best_metric: auto`` means for the recipe's task kind."""
    name = recipe.task.name
    if name == "seq2seq":
        return error_names(recipe)[0], "min"
    if name == "stress":
        return "both_acc", "max"
    return None, "min"  # digits_cycle: its phases optimise different losses
