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
from ._fingerprint import plan_differences, plan_fingerprint
from ._optim import load_state_by_name

if TYPE_CHECKING:
    from ._trainer import Trainer

__all__ = ["restore", "check_plan", "SELF"]

SELF = "."  # state["best_checkpoint"] of a checkpoint that is itself the best


def restore(trainer: Trainer, source: str | Path, steps_per_epoch: int, allow_plan_change: bool) -> None:
    """Put ``trainer`` where checkpoint ``source`` left its run, in this order: plan check, weights
    (complete or refused), counters and history, callbacks' states, the phase the plan puts the step
    in (freeze state, optimizer, cache), optimizer and scaler state, RNG, and the ``best`` pointer."""
    source = ckpt.resolve_checkpoint(source)
    state = ckpt.load_state(source)
    check_plan(trainer, state, steps_per_epoch, allow_plan_change)
    ckpt.load_weights(trainer.model, trainer.parts, source)  # complete or refused
    trainer.step, trainer.history, trainer.best = state["step"], state["history"], state["best"]
    trainer._saved_at = trainer.step  # this step's checkpoint exists: no second one at the same step
    trainer.epoch = trainer.step // steps_per_epoch
    trainer._stale_evals, trainer.skipped_steps = state["stale_evals"], state["skipped_steps"]
    trainer._stop_best = state.get("stop_best", state["best"])
    trainer._epoch_loss = (float(state["epoch_loss"][0]), int(state["epoch_loss"][1]))
    # before the phase is entered: a callback sees a resumed phase as its own
    load_callback_states(trainer.callbacks, state.get("callbacks", {}))
    trainer._enter_phase(trainer.plan.span_at(trainer.step, steps_per_epoch))  # the freeze state comes from the plan
    load_state_by_name(trainer.running()[1], state["optimizer"])
    if trainer.scaler is not None and state["scaler"]:
        trainer.scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng"]["cpu"])
    if "cuda" in state["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    _restore_best_pointer(trainer, source, state.get("best_checkpoint"))


def check_plan(trainer: Trainer, state: dict[str, Any], steps_per_epoch: int, allow_plan_change: bool) -> None:
    """Refuse a resume under another plan than the checkpoint's, unless ``allow_plan_change``
    (then the change is warned about, kept in ``plan_changes`` and told to callbacks)."""
    step = state["step"]
    trainer.plan_changes = list(state.get("plan_changes", []))
    if "plan" in state:
        changes = plan_differences(state["plan"], plan_fingerprint(trainer.plan, steps_per_epoch))
    else:  # a checkpoint from before plan fingerprints: its phase index must fit the plan
        span = trainer.plan.span_at(step, steps_per_epoch)
        allowed = {span.index} | ({span.index - 1} if step == span.start else set())
        changes = [] if state["phase"] in allowed else [
            f"the checkpoint is in phase {state['phase']} at step {step}, "
            f"the plan puts that step in phase {span.index}"]
    if not changes:
        return
    if not allow_plan_change:
        raise ConfigError([f"resume: {c}" for c in changes] + [
            "resume with the plan the run was started with, or pass allow_plan_change=True "
            "(partwise resume --allow-plan-change) to continue under this one"])
    recorded = [f"step {step}: {c}" for c in changes]
    trainer.plan_changes += recorded
    warnings.warn("resuming under a changed plan (allow_plan_change=True): " + "; ".join(changes),
                  RuntimeWarning, stacklevel=4)
    notify(trainer.callbacks, "on_plan_change", trainer, recorded)


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
