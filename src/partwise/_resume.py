"""Resuming a run: restore the trainer from a checkpoint, after checking it was trained under this plan."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from . import _checkpoint as ckpt
from ._atomic import write_text_atomic
from ._callbacks import load_callback_states, notify
from ._errors import ConfigError
from ._fingerprint import data_differences
from ._optim import load_state_by_name

if TYPE_CHECKING:
    from ._trainer import Trainer

__all__ = ["restore", "SELF"]

SELF = "."  # state["best_checkpoint"] of a checkpoint that is itself the best


def restore(trainer: Trainer, source: str | Path, steps_per_epoch: int, allow_plan_change: bool,
            allow_data_change: bool = False) -> None:
    """Put ``trainer`` where checkpoint ``source`` left its run, in this order: the training data
    (refused if it changed, unless ``allow_data_change``), the plan (refused if it changed, unless
    ``allow_plan_change``) and the freeze state it was saved in, weights (complete or refused),
    counters and history, callbacks' states, the optimizer in the layout it was saved from and its
    state, scaler state, RNG, and the ``best`` pointer. The first step then enters its phase (see
    :class:`~partwise.PlanDriver`)."""
    source = ckpt.resolve_checkpoint(source)
    state = ckpt.load_state(source)
    errors: list[str] = []  # data and plan differences reported together
    try:
        data_changes = _check_data(trainer, state, allow_data_change)
    except ConfigError as e:
        errors += e.errors
    try:
        changes = trainer.driver.load_state_dict(state["plan"], allow_plan_change, step=state["step"])
    except ConfigError as e:
        errors += e.errors
    if errors:
        raise ConfigError(errors)
    changes += data_changes
    ckpt.load_weights(trainer.model, trainer.parts, source)  # complete or refused
    trainer.step, trainer.history, trainer.best = state["step"], state["history"], state["best"]
    trainer._saved_at = trainer.step  # this step's checkpoint exists: no second one at the same step
    trainer.epoch = trainer.step // steps_per_epoch
    trainer._stale_evals, trainer.skipped_steps = state["stale_evals"], state["skipped_steps"]
    trainer._stop_best = state.get("stop_best", state["best"])
    trainer._epoch_loss = (float(state["epoch_loss"][0]), int(state["epoch_loss"][1]))
    # before the phase is entered: a callback sees a resumed phase as its own
    load_callback_states(trainer.callbacks, state.get("callbacks", {}))
    if changes:
        notify(trainer.callbacks, "on_plan_change", trainer, changes)
    load_state_by_name(trainer.driver.build_optimizer(), state["optimizer"])
    if trainer.scaler is not None and state["scaler"]:
        trainer.scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng"]["cpu"])
    if "cuda" in state["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    _restore_best_pointer(trainer, source, state.get("best_checkpoint"))


def _check_data(trainer: Trainer, state: dict[str, Any], allow: bool) -> list[str]:
    """Refuse to resume on other training data or data settings than the checkpoint's (every
    difference named), unless ``allow``: then they are warned about and recorded."""
    trainer.data_changes = list(state.get("data_changes", []))
    differences = data_differences(state.get("data", {}), trainer._data)
    if not differences:
        return []
    if not allow:
        raise ConfigError([f"resume: {d}" for d in differences] + [
            "resume on the data and settings the run was started with (the data order and every step after "
            "depend on them), or allow the change (allow_data_change=True; partwise resume --allow-data-change)"])
    warnings.warn("resuming on changed training data (allow_data_change=True): " + "; ".join(differences),
                  RuntimeWarning, stacklevel=4)
    recorded = [f"step {state['step']}: data: {d}" for d in differences]
    trainer.data_changes += recorded
    return recorded


def _restore_best_pointer(trainer: Trainer, source: Path, recorded: Any) -> None:
    """After a kill between a checkpoint's ``latest`` and ``best`` pointers, point ``best`` where the
    resumed checkpoint says it should (when that checkpoint is in this run and still exists)."""
    if not isinstance(recorded, str) or trainer.run_dir is None or trainer.rank != 0:
        return
    root = trainer.run_dir / "checkpoints"
    name = source.name if recorded == SELF else recorded
    if source.parent.resolve() != root.resolve() or not (root / name / ckpt.META).is_file():
        return
    trainer._best_name = name
    pointer = root / "best"
    if not pointer.is_file() or pointer.read_text(encoding="utf-8").strip() != name:
        write_text_atomic(pointer, name)
