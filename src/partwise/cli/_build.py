"""Recipe pieces shared by every task kind: parts, plan, teacher forcing, trainer options, artifacts."""

from __future__ import annotations

import re
from typing import Any

from torch import nn

from .._errors import ConfigError, PartError
from .._model._parts import Parts
from .._optim._plan import Phase, Plan
from .._optim._schedule import LRSchedule
from .._train._trainer import EarlyStopping
from ..recipe import Recipe, build_teacher_forcing
from ..seq2seq import TEACHER_FORCING

__all__ = ["build_parts", "build_plan", "trainer_kwargs"]


def build_parts(recipe: Recipe, model: nn.Module) -> Parts:
    # HF models get partwise.hf's parts unless the recipe names its own
    from ..tasks._hf_models import default_spec

    try:
        return Parts(model, recipe.parts if recipe.parts is not None else default_spec(model))
    except PartError as e:
        raise ConfigError([f"parts: {e}"]) from None


def _task_options(ph: Any, i: int) -> dict[str, Any]:
    """A recipe phase's task options: its ``teacher_forcing:`` key (seq2seq) as the seq2seq tasks read it."""
    tf = build_teacher_forcing(ph.teacher_forcing, f"plan.{i}.teacher_forcing")
    return {} if tf is None else {TEACHER_FORCING: tf}


def recipe_paths(message: str) -> str:
    """A core message's plan location in recipe form: ``plan.phases[1] ('decoder')`` -> ``plan.1``."""
    return re.sub(r"plan\.phases\[(\d+)\] \((?:'[^']*'|\"[^\"]*\")\)", r"plan.\1", message)


def build_plan(recipe: Recipe, parts: Parts) -> Plan:
    """The recipe's plan, checked against ``parts`` by :meth:`partwise.Plan.check` (unknown parts,
    half-frozen shared tensors, each phase's optimizer options), locations in recipe form."""
    phases, errors = [], []
    for i, ph in enumerate(recipe.plan):
        try:
            phases.append(Phase(
                ph.name, epochs=ph.epochs, steps=ph.steps, train=ph.train,
                optimizer={**recipe.optimizer, **ph.optimizer}, schedule=LRSchedule(**ph.schedule.model_dump()),
                task_options=_task_options(ph, i),
                norm=ph.norm, dropout=ph.dropout, separate=recipe.separate,
            ))
        except ConfigError as e:
            errors += e.errors
    try:
        plan = Plan(phases) if not errors else None
        if plan is not None:
            plan.check(parts)
    except ConfigError as e:
        errors += e.errors
    if errors or plan is None:
        raise ConfigError([recipe_paths(m) for m in errors])
    return plan


def trainer_kwargs(recipe: Recipe, collate_fn: Any = None) -> dict[str, Any]:
    t = recipe.training
    stop = (EarlyStopping(t.early_stopping.metric, t.early_stopping.mode, t.early_stopping.patience)
            if t.early_stopping else None)
    return dict(seed=recipe.seed, device=t.device, precision=t.precision, grad_clip=t.grad_clip,
                grad_accum=t.grad_accum, on_nonfinite=t.on_nonfinite, save_every=t.save_every, early_stopping=stop,
                best_metric=(t.best_metric, t.best_mode) if t.best_metric else None, batch_size=t.batch_size,
                collate_fn=collate_fn, cache=t.cache, guard=t.guard,
                average_last=t.average_last)
