"""What a checkpoint remembers of the plan it was trained under, and how another plan differs from it.

The fingerprint is plain text (safe for ``torch.load(weights_only=True)``): per phase its name,
length, trained parts with their optimizer options, shared optimizer options, LR schedule,
task options (e.g. teacher forcing) and frozen-layer modes; and the steps per epoch,
which place epoch-long phases on the step axis.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ._plan import Phase, Plan

__all__ = ["plan_fingerprint", "plan_differences"]

_FIELDS = ("name", "epochs", "steps", "train", "optimizer", "schedule", "task_options", "norm", "dropout", "separate")


def _canonical(value: Any) -> str:
    """``repr`` with mapping keys sorted and memory addresses removed (stable across processes)."""
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k!r}: {_canonical(value[k])}" for k in sorted(value, key=str)) + "}"
    return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(value))


def _phase(ph: Phase) -> dict[str, str]:
    values = {"name": ph.name, "epochs": ph.epochs, "steps": ph.steps, "train": ph.train_options(),
              "optimizer": dict(ph.optimizer), "schedule": ph.schedule, "task_options": ph.task_options,
              "norm": ph.norm, "dropout": ph.dropout, "separate": ph.separate}
    return {k: _canonical(values[k]) for k in _FIELDS}


# Checkpoints written before phases carried opaque task options stored the one option there was,
# the seq2seq teacher forcing, as its own field, and its schedules under their former class names.
# A saved fingerprint is read in today's spelling, so those runs still resume.
_LEGACY_FIELD = "teacher_forcing"
_LEGACY_NAMES = re.compile(r"\b(Constant|Linear|Exponential|InverseSigmoid)Schedule\(")


def _upgrade(saved_phase: Mapping[str, Any]) -> Mapping[str, Any]:
    """A phase fingerprint of an older checkpoint in today's fields (unchanged when already current).

    >>> _upgrade({"teacher_forcing": "None"})["task_options"], _upgrade({"teacher_forcing": "TF()"})["task_options"]
    ('{}', "{'teacher_forcing': TF()}")
    """
    if _LEGACY_FIELD not in saved_phase or "task_options" in saved_phase:
        return saved_phase
    out = {k: v for k, v in saved_phase.items() if k != _LEGACY_FIELD}
    value = _LEGACY_NAMES.sub(r"\1TFSchedule(", str(saved_phase[_LEGACY_FIELD]))
    out["task_options"] = "{}" if value == "None" else "{" + f"{_LEGACY_FIELD!r}: {value}" + "}"
    return out


def plan_fingerprint(plan: Plan, steps_per_epoch: int) -> dict[str, Any]:
    """The plan as stored in a checkpoint.

    >>> fp = plan_fingerprint(Plan([Phase("a", epochs=1, train={"dec": 1e-3})]), steps_per_epoch=5)
    >>> fp["phases"][0]["train"]
    "{'dec': {'lr': 0.001}}"
    """
    return {"steps_per_epoch": int(steps_per_epoch), "phases": [_phase(ph) for ph in plan.phases]}


def plan_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Every difference between a stored fingerprint and the current plan's, one line each.

    >>> a = plan_fingerprint(Plan([Phase("a", epochs=1, train={"dec": 1e-3})]), 5)
    >>> b = plan_fingerprint(Plan([Phase("a", epochs=2, train={"dec": 1e-3})]), 5)
    >>> plan_differences(a, b)
    ["phase 0 ('a').epochs: checkpoint 1, now 2"]
    """
    out = []
    if saved.get("steps_per_epoch") != current["steps_per_epoch"]:
        out.append(f"steps per epoch: checkpoint {saved.get('steps_per_epoch')}, now {current['steps_per_epoch']} "
                   "(the batch size, grad_accum or training data changed)")
    old, new = [_upgrade(ph) for ph in saved.get("phases", [])], list(current["phases"])
    if len(old) != len(new):
        out.append(f"number of phases: checkpoint {len(old)}, now {len(new)}")
    for i, (a, b) in enumerate(zip(old, new, strict=False)):
        for key in _FIELDS:
            if a.get(key) != b.get(key):
                out.append(f"phase {i} ({b['name']}).{key}: checkpoint {a.get(key)}, now {b.get(key)}")
    return out
