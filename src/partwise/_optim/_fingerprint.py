"""What a checkpoint remembers of the plan and the data it was trained on, and how they differ now.

Both fingerprints are plain text (safe for ``torch.load(weights_only=True)``) and the same in every
process: values are written in a canonical form (mappings and sets sorted, dataclasses field by
field, memory addresses removed), never through ``hash()``, which ``PYTHONHASHSEED`` changes.

* The plan: per phase its name, length, trained parts with their optimizer options, shared options,
  LR schedule, task options (e.g. teacher forcing) and frozen-layer modes; and the steps per epoch,
  which place epoch-long phases on the step axis.
* The data: the number of training rows, a digest of their contents, and the settings that decide
  the data order (batch size, gradient accumulation, seed). A dataset with a ``fingerprint()`` method
  (partwise's own) digests every row; any other dataset a spread of up to 256 rows.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from ._plan import Phase, Plan

__all__ = ["plan_fingerprint", "plan_differences", "data_fingerprint", "data_differences", "canonical"]

_FIELDS = ("name", "epochs", "steps", "train", "optimizer", "schedule", "task_options", "norm", "dropout", "separate")
_SAMPLED_ROWS = 256


def canonical(value: Any) -> str:
    """A value as text that is the same in every process: mappings and sets sorted, dataclasses
    field by field, sequences element by element, anything else its ``repr`` without addresses.

    Examples:
        >>> canonical({"b": {3, 1, 2}, "a": (1.0, "x")})
        "{'a': (1.0, 'x'), 'b': {1, 2, 3}}"
    """
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k!r}: {canonical(value[k])}" for k in sorted(value, key=canonical)) + "}"
    if isinstance(value, set | frozenset):
        inner = ", ".join(sorted(canonical(v) for v in value))
        return "{" + inner + "}" if isinstance(value, set) else f"frozenset({{{inner}}})"
    if isinstance(value, list | tuple) and type(value) in (list, tuple):
        inner = ", ".join(canonical(v) for v in value) + ("," if isinstance(value, tuple) and len(value) == 1 else "")
        return f"[{inner}]" if isinstance(value, list) else f"({inner})"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = ", ".join(f"{f.name}={canonical(getattr(value, f.name))}" for f in dataclasses.fields(value)
                           if f.repr)
        return f"{type(value).__name__}({fields})"
    if isinstance(value, str):
        return repr(value)
    return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(value))


def _phase(ph: Phase) -> dict[str, str]:
    values = {"name": ph.name, "epochs": ph.epochs, "steps": ph.steps, "train": ph.train_options(),
              "optimizer": dict(ph.optimizer), "schedule": ph.schedule, "task_options": ph.task_options,
              "norm": ph.norm, "dropout": ph.dropout, "separate": ph.separate}
    return {k: canonical(values[k]) for k in _FIELDS}


def plan_fingerprint(plan: Plan, steps_per_epoch: int) -> dict[str, Any]:
    """The plan as stored in a checkpoint.

    Examples:
        >>> fp = plan_fingerprint(Plan([Phase("a", epochs=1, train={"dec": 1e-3})]), steps_per_epoch=5)
        >>> fp["phases"][0]["train"]
        "{'dec': {'lr': 0.001}}"
    """
    return {"steps_per_epoch": int(steps_per_epoch), "phases": [_phase(ph) for ph in plan.phases]}


def plan_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Every difference between a stored fingerprint and the current plan's, one line each.

    Examples:
        >>> a = plan_fingerprint(Plan([Phase("a", epochs=1, train={"dec": 1e-3})]), 5)
        >>> b = plan_fingerprint(Plan([Phase("a", epochs=2, train={"dec": 1e-3})]), 5)
        >>> plan_differences(a, b)
        ["phase 0 ('a').epochs: checkpoint 1, now 2"]
    """
    out = []
    if saved.get("steps_per_epoch") != current["steps_per_epoch"]:
        out.append(f"steps per epoch: checkpoint {saved.get('steps_per_epoch')}, now {current['steps_per_epoch']} "
                   "(the batch size, grad_accum or training data changed)")
    old, new = list(saved.get("phases", [])), list(current["phases"])
    if len(old) != len(new):
        out.append(f"number of phases: checkpoint {len(old)}, now {len(new)}")
    for i, (a, b) in enumerate(zip(old, new, strict=False)):
        for key in _FIELDS:
            if a.get(key) != b.get(key):
                out.append(f"phase {i} ({b['name']}).{key}: checkpoint {a.get(key)}, now {b.get(key)}")
    return out


def _digest_value(h: Any, value: Any) -> None:
    """Feed ``value`` (a row: tensors, arrays, numbers, strings, and containers of them) into ``h``."""
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(value, Mapping):
        for k in sorted(value, key=canonical):
            h.update(canonical(k).encode())
            _digest_value(h, value[k])
    elif isinstance(value, list | tuple):
        h.update(f"L{len(value)}".encode())
        for v in value:
            _digest_value(h, v)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            h.update(f.name.encode())
            _digest_value(h, getattr(value, f.name))
    elif hasattr(value, "__array__") and not isinstance(value, str | bytes):
        _digest_value(h, torch.as_tensor(value))
    else:
        h.update(canonical(value).encode())


def data_fingerprint(dataset: Any, **settings: Any) -> dict[str, Any]:
    """The training data as stored in a checkpoint: rows, a content digest and ``settings`` (e.g.
    ``batch_size``, ``grad_accum``, ``seed``). A dataset's own ``fingerprint()`` (a string over every
    row) is used when it has one; otherwise up to 256 rows spread over the dataset are digested.

    Examples:
        >>> data_fingerprint([(1, "a"), (2, "b")], batch_size=2)["rows"]
        2
    """
    n = len(dataset)
    own = getattr(dataset, "fingerprint", None)
    content: str | None
    if callable(own):
        content, how = str(own()), "every row"
    else:
        content, how = _sampled_digest(dataset, n)
    return {"rows": n, "content": content, "digest_of": how, **{k: canonical(v) for k, v in settings.items()}}


def _sampled_digest(dataset: Any, n: int) -> tuple[str | None, str]:
    """A digest of up to 256 rows spread over ``dataset``, read with every random generator put back
    afterwards (a dataset that augments at random draws as if never read). A dataset that cannot be
    read here (one meant for worker processes, say) gets no content digest: its size and the
    settings are still compared, never a failed run."""
    h = hashlib.blake2b(digest_size=16)
    picks = range(n) if n <= _SAMPLED_ROWS else sorted({round(i * (n - 1) / (_SAMPLED_ROWS - 1))
                                                        for i in range(_SAMPLED_ROWS)})
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            for i in picks:
                _digest_value(h, dataset[i])
    except Exception as e:  # noqa: BLE001 - any user dataset; the digest is only a check
        return None, f"sizes only (a row could not be read in the main process: {type(e).__name__})"
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return h.hexdigest(), f"{len(picks)} of {n} rows"


def data_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Every difference between the data a checkpoint was trained on and today's, one line each.

    Examples:
        >>> data_differences(data_fingerprint([1, 2], seed=0), data_fingerprint([1, 3], seed=5))
        ['training data: 2 rows as before, but other contents (2 of 2 rows compared)', 'seed: checkpoint 0, now 5']
    """
    out = []
    if saved.get("rows") != current["rows"]:
        out.append(f"training rows: checkpoint {saved.get('rows')}, now {current['rows']}")
    elif None not in (saved.get("content"), current["content"]) and saved.get("content") != current["content"]:
        out.append(f"training data: {current['rows']} rows as before, but other contents ({current['digest_of']} "
                   "compared)")
    for key in sorted(set(current) - {"rows", "content", "digest_of"}):
        if saved.get(key) != current[key]:
            out.append(f"{key}: checkpoint {saved.get(key)}, now {current[key]}")
    return out
