"""Resuming a run: restore the trainer from a checkpoint, after checking it was trained under this plan."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._errors import CheckpointError, ConfigError
from .._optim._fingerprint import data_differences
from .._run import _checkpoint as ckpt
from .._run._layout import BEST, META, STATE
from .._run._runfolder import RunFolder
from . import _fsdp as fsdp

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
    ckpt.check_state_keys(state, str(source / STATE))
    errors: list[str] = []  # data and plan differences reported together
    data_changes: list[str] = []
    try:
        data_changes = _check_data(state, trainer.data_fingerprint, allow_data_change)
    except ConfigError as e:
        errors += e.errors
    changes: list[str] = []
    try:
        changes = trainer.driver.load_state_dict(state["plan"], allow_plan_change, step=state["step"])
    except ConfigError as e:
        errors += e.errors
    if errors:
        raise ConfigError(errors)
    if trainer.sharded:
        state["optimizer"] = _load_sharded(trainer, source, state["optimizer"])
    else:
        ckpt.load_weights(trainer.model, trainer.parts, source)  # complete or refused
        if fsdp.has_placeholders(state["optimizer"]):  # a sharded run's: its optimizer state is in the shards
            state["optimizer"] = fsdp.load_sharded(trainer.model, source / fsdp.SHARDS, state["optimizer"],
                                                   weights=False)
    best = _restore_best_pointer(trainer, source, state.get("best_checkpoint"))
    trainer.load_state_dict(state, steps_per_epoch, changes + data_changes, data_changes, best)


def _check_data(state: dict[str, Any], now: dict[str, Any], allow: bool) -> list[str]:
    """Refuse to resume on other training data or data settings than the checkpoint's (every
    difference named), unless ``allow``: then they are warned about and returned, to be recorded."""
    differences = data_differences(state["data"], now)
    if not differences:
        return []
    if not allow:
        raise ConfigError([f"resume: {d}" for d in differences] + [
            "resume on the data and settings the run was started with (the data order and every step after "
            "depend on them), or allow the change (allow_data_change=True; partwise resume --allow-data-change)"])
    warnings.warn("resuming on changed training data (allow_data_change=True): " + "; ".join(differences),
                  RuntimeWarning, stacklevel=4)
    return [f"step {state['step']}: data: {d}" for d in differences]


def _restore_best_pointer(trainer: Trainer, source: Path, recorded: Any) -> str | None:
    """After a kill between a checkpoint's ``latest`` and ``best`` pointers, point ``best`` where the
    resumed checkpoint says it should (when that checkpoint is in this run and still exists); returns
    the checkpoint ``best`` names then (``None``: none restored)."""
    if not isinstance(recorded, str) or trainer.run_dir is None or trainer.rank != 0:
        return None
    run = RunFolder(trainer.run_dir)
    name = source.name if recorded == SELF else recorded
    if (source.parent.resolve() != run.checkpoints.resolve() or not ckpt.PLAIN_NAME.fullmatch(name)
            or not (run.checkpoints / name / META).is_file()):
        return None
    pointer = run.checkpoints / BEST
    if not pointer.is_file() or pointer.read_text(encoding="utf-8").strip() != name:
        run.point_best(name)
    return name


def _load_sharded(trainer: Trainer, source: Path, optimizer_state: Any) -> Any:
    """The weights of a sharded model from ``source``: every rank's shards when the checkpoint has
    them (any world size: torch.distributed.checkpoint reshards), else the whole per-part tensors
    (a one-process checkpoint), each rank keeping its shard. Parts a ``checkpoint_parts="trained"``
    checkpoint left out are checked against its digests on rank 0, the verdict shared. Returns the
    optimizer state with its sharded tensors read."""
    from . import _distributed as dist

    meta = ckpt.read_meta(source)
    unsaved: dict[str, str] = meta.get("unsaved") or {}
    if unsaved:
        whole = fsdp.full_part_tensors(trainer.model, trainer.parts, list(unsaved))
        changed = [p for p, digest in unsaved.items() if ckpt.part_digest(whole.get(p, {})) != digest]
        changed = dist.broadcast_object(changed, trainer.world)
        if changed:
            raise CheckpointError(
                f"checkpoint {str(source)!r} does not hold part(s) {changed} (saved with checkpoint_parts='trained'), "
                "and the model's do not hold the weights it was trained with: load them first", changed)
    if (source / fsdp.SHARDS).is_dir():
        return fsdp.load_sharded(trainer.model, source / fsdp.SHARDS, optimizer_state)
    tensors = {k: t for fname in meta["parts"].values() for k, t in ckpt.read_part(source, fname).items()}
    fsdp.load_full(trainer.model, tensors)
    return optimizer_state
