"""Recipe pieces shared by every task kind: parts, plan, teacher forcing, trainer options, artifacts."""

from __future__ import annotations

import re
from collections.abc import Callable
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


def build_parts(recipe: Recipe, model: nn.Module, init: Callable[[Parts], None] | None = None) -> Parts:
    """The recipe's parts (HF models get partwise.hf's unless the recipe names its own), with its
    ``adapters:`` added to ``model`` (in place); ``init`` is given the parts before any adapter is added,
    so weights from another run load under their own names."""
    from ..tasks._hf_models import default_spec

    spec = recipe.parts if recipe.parts is not None else default_spec(model)
    try:
        parts = Parts(model, spec)
        if init is not None:
            init(parts)
        if recipe.adapters is None:
            return parts
        from ..peft import adapter_modules, add_lora, lora_of, require_peft

        require_peft()
        a = recipe.adapters
        if adapter_modules(model):  # a copy of the run's adapted model (the checks of a resume)
            lora = lora_of(model, spec, split=a.split)
        else:
            lora = add_lora(model, a.parts, spec=spec, r=a.r, alpha=a.alpha, dropout=a.dropout, targets=a.targets,
                            split=a.split)
        return Parts(model, lora.spec)
    except PartError as e:
        raise ConfigError([f"parts: {e}"]) from None
    except ConfigError as e:
        raise ConfigError([m.replace("adapters: ", "adapters.parts: ", 1) if m.startswith("adapters: '") else m
                           for m in e.errors]) from None


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
                average_last=t.average_last, checkpoint_parts=t.checkpoint_parts)
