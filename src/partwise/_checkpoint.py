"""Checkpoints: weights as safetensors, one file per part; training state loaded with
``weights_only=True``; every write atomic (temporary name, then rename).

Layout of a run directory::

    run/checkpoints/step-00000120/      one complete checkpoint
        part-encoder.safetensors         tensors (parameters and buffers) of part "encoder"
        part-decoder.safetensors
        state.pt                         optimizer, plan position, RNG, data order (tensors + plain types)
        meta.json                        written last: its presence marks the checkpoint complete
    run/checkpoints/latest               name of the newest complete checkpoint
    run/checkpoints/best                 name of the best one (when tracked)
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from ._errors import PartError
from ._parts import REST, Parts

__all__ = ["part_tensors", "save_checkpoint", "resolve_checkpoint", "load_weights", "load_state", "read_meta"]

META, STATE = "meta.json", "state.pt"


def part_tensors(model: nn.Module, parts: Parts) -> dict[str, dict[str, torch.Tensor]]:
    """The model's state dict split by part (a tied tensor once, under its first name)."""
    owner = parts.part_of()
    module_part: dict[str, str] = {}
    for part in parts:
        for path in part.modules:
            module_part.setdefault(path, part.name)
    seen: set[int] = set()
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in model.state_dict(keep_vars=True).items():
        if not isinstance(t, torch.Tensor) or id(t) in seen:
            continue
        seen.add(id(t))
        part = owner.get(id(t)) if isinstance(t, nn.Parameter) else module_part.get(key.rpartition(".")[0], REST)
        out.setdefault(part or REST, {})[key] = t.detach()
    return out


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def save_checkpoint(
    ckpt_root: str | Path,
    name: str,
    model: nn.Module,
    parts: Parts,
    state: dict[str, Any],
    meta: dict[str, Any],
    pointers: tuple[str, ...] = ("latest",),
    keep: int = 1,
) -> Path:
    """Write checkpoint ``ckpt_root/name`` atomically and point ``pointers`` at it.

    A process killed at any moment leaves the previous complete checkpoint and its pointer intact.
    Older checkpoints beyond ``keep`` (not named by any pointer) are removed afterwards.
    """
    root = Path(ckpt_root)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    files = {}
    for part, tensors in part_tensors(model, parts).items():
        fname = f"part-{part}.safetensors"
        save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, str(tmp / fname), metadata={"part": part})
        files[part] = fname
    torch.save(state, tmp / STATE)
    (tmp / META).write_text(json.dumps({**meta, "parts": files}, indent=2, sort_keys=True), encoding="utf-8")
    final = root / name
    if final.exists():
        old = root / f".{name}.old-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    for p in pointers:
        write_text_atomic(root / p, name)
    _prune(root, keep)
    return final


def _prune(root: Path, keep: int) -> None:
    pinned = {(root / p).read_text().strip() for p in ("latest", "best") if (root / p).exists()}
    complete = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".") and (d / META).exists())
    for d in complete[: max(0, len(complete) - keep)]:
        if d.name not in pinned:
            shutil.rmtree(d, ignore_errors=True)


def resolve_checkpoint(path: str | Path, which: str = "latest") -> Path:
    """A checkpoint directory from a run directory, its ``checkpoints/`` folder or the checkpoint itself.

    Raises ``FileNotFoundError`` with what was looked for when there is none.
    """
    p = Path(path)
    if (p / META).exists():
        return p
    for root in (p / "checkpoints", p):
        pointer = root / which
        if pointer.is_file():
            target = root / pointer.read_text().strip()
            if (target / META).exists():
                return target
        if root.is_dir():
            complete = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".") and (d / META).exists())
            if complete and which == "latest":
                return complete[-1]
    raise FileNotFoundError(f"no complete checkpoint at {str(p)!r} (looked for {which!r} under it and under checkpoints/); "
                            "give a run directory written by partwise or a checkpoint folder")


def read_meta(ckpt: Path) -> dict[str, Any]:
    return json.loads((ckpt / META).read_text(encoding="utf-8"))


def load_weights(model: nn.Module, parts: Parts, ckpt: str | Path, only: list[str] | None = None) -> list[str]:
    """Load the weights of ``only`` these parts (default: all in the checkpoint) into ``model``.

    Checks names and shapes first and raises :class:`~partwise.PartError` listing every mismatch,
    leaving the model untouched. Returns the part names loaded.
    """
    ckpt = resolve_checkpoint(ckpt)
    files: dict[str, str] = read_meta(ckpt)["parts"]
    wanted = only if only is not None else list(files)
    missing_parts = [p for p in wanted if p not in files]
    if missing_parts:
        raise PartError(f"checkpoint {str(ckpt)!r} has no part(s) {missing_parts}; it has {sorted(files)}")
    current = {k: t for tensors in part_tensors(model, parts).values() for k, t in tensors.items()}
    loaded: dict[str, torch.Tensor] = {}
    problems = []
    for part in wanted:
        with safe_open(str(ckpt / files[part]), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open has keys(), not iteration)
                t = f.get_tensor(key)
                if key not in current:
                    problems.append(f"{key} (part {part!r}) is not in the model")
                elif tuple(current[key].shape) != tuple(t.shape):
                    problems.append(f"{key}: checkpoint {tuple(t.shape)} vs model {tuple(current[key].shape)}")
                else:
                    loaded[key] = t
    if problems:
        raise PartError(f"checkpoint {str(ckpt)!r} does not fit this model: " + "; ".join(problems[:8])
                        + (f" (+{len(problems) - 8} more)" if len(problems) > 8 else ""))
    with torch.no_grad():
        for key, t in loaded.items():
            current[key].copy_(t)
    return wanted


def load_state(ckpt: str | Path) -> dict[str, Any]:
    """The training state of a checkpoint, loaded with ``weights_only=True`` (no arbitrary unpickling)."""
    return torch.load(resolve_checkpoint(ckpt) / STATE, map_location="cpu", weights_only=True)
