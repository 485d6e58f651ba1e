"""Every check of a recipe that can run before any data is read or any folder is touched.

:func:`check_recipe` runs the task kind's own checks, then builds the recipe's model (a stand-in when
the kind offers ``model_for_check``), its parts and plan, and checks on them: each phase's optimizer
(name and options, by the validator ``Plan.check`` runs, a dry run of the optimizer class
included), ``training.grad_clip``, the metric that ``best_metric`` / ``early_stopping`` name (against the
kind's declared metrics), and that ``training.device`` exists on this machine. Device, precision and
clipping are checked by the Trainer's own rules (``partwise._train._trainer_args``); here they only get their
recipe paths. Every problem is reported at once, as one :class:`~partwise.ConfigError`, with its path in
the recipe.
"""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

from .._errors import ConfigError
from .._model._parts import Parts
from .._train._trainer_args import clip_problems, device_for, precision_problem
from .._train._trainer_args import metric_problems as core_metric_problems
from ..recipe import Recipe, declared_metrics, get_kind
from . import _build as build
from ._init import init_part_problems, init_problems

__all__ = ["check_recipe", "device_problems", "grad_clip_problems", "metric_problems"]


def check_recipe(recipe: Recipe, source: str | None = None, model: nn.Module | None = None) -> None:
    """Raise one :class:`ConfigError` listing every problem of ``recipe`` found without its data
    (``source``: the file the recipe came from, named in the message).

    ``model``: a run's model already built from its saved artifacts (``resume``); the checks then run
    on a copy of it instead of the kind's stand-in, and the kind's own checks are skipped (they look
    at what only a new run needs, such as a source run to copy an encoder from, or ``init:``)."""
    try:
        problems = _problems(recipe, model)
    except ConfigError as e:  # the kind's checks, or parts and plan that cannot be built
        raise ConfigError(e.errors, e.source or source) from None
    if problems:
        raise ConfigError(problems, source)


def _problems(recipe: Recipe, model: nn.Module | None) -> list[str]:
    kind = get_kind(recipe.task.name, recipe.task.path)
    problems: list[str] = []
    if model is None:
        problems = init_problems(recipe, kind)
        try:
            kind.check(recipe)
        except ConfigError as e:
            raise ConfigError(e.errors + problems) from None
        model = kind.model_for_check(recipe)
    else:
        model = copy.deepcopy(model)  # the checks build a parts registry on it: the run's model stays untouched
    problems += device_problems(recipe)
    if model is None:
        return problems + metric_problems(recipe, kind)
    parts = build.build_parts(recipe, model)
    try:
        build.build_plan(recipe, parts)  # the plan's own checks (Plan.check), with recipe paths
    except ConfigError as e:
        problems += e.errors
    return (problems + grad_clip_problems(recipe, parts)
            + metric_problems(recipe, kind) + init_part_problems(recipe, parts.names))


def device_problems(recipe: Recipe) -> list[str]:
    """``training.device`` and ``training.precision``, by the Trainer's own rules, with recipe paths."""
    device, problem = device_for(recipe.training.device)
    if problem:
        return [f"training.{problem}"]
    precision = precision_problem(recipe.training.precision, device) if device is not None else None
    return [f"training.{precision}"] if precision else []


def grad_clip_problems(recipe: Recipe, parts: Parts) -> list[str]:
    """``training.grad_clip``, by the Trainer's own rule, with recipe paths."""
    return [f"training.{m}" for m in clip_problems(recipe.training.grad_clip, parts.names)]


def metric_problems(recipe: Recipe, kind: Any) -> list[str]:
    """``best_metric`` and ``early_stopping.metric``, by the Trainer's own rule (the kind declares its
    task's metrics), with recipe paths."""
    t = recipe.training
    stop = t.early_stopping.metric if t.early_stopping else None
    rules = [(f"training.{where}", name) for where, name in (("best_metric", t.best_metric),
                                                              ("early_stopping.metric", stop)) if name is not None]
    return core_metric_problems(rules, declared_metrics(recipe, kind), True, f"{recipe.task.name!r}")
