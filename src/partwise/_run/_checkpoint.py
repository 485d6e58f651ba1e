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

A pointer names a complete checkpoint at every instant (a re-save under a pinned name is written as
``step-00000120.1`` first, see :func:`save_checkpoint`). A writer killed mid-way leaves a hidden
``.step-00000120.tmp-<pid>`` folder (or ``.latest.tmp-<pid>`` file), which :func:`remove_debris`
removes at the next start once that process is gone.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .._errors import CheckpointError, CheckpointNotFound
from .._model._parts import REST, Parts
from . import _failpoints
from ._atomic import write_text_atomic
from ._layout import AVERAGED, BEST, CHECKPOINTS, LATEST, META, POINTERS, STATE

__all__ = ["part_tensors", "save_checkpoint", "write_checkpoint", "point", "epoch_end_checkpoints",
           "averaged_checkpoint", "drop_versions", "resolve_checkpoint", "find_checkpoint",
           "pointer_target", "PLAIN_NAME", "best_or_latest", "load_weights", "load_state",
           "read_meta", "read_part", "part_file_problems", "remove_debris", "tidy", "pid_alive", "discard",
           "STATE_KEYS", "check_state_keys", "complete_checkpoints", "part_digest"]

#: the keys of ``Trainer.state_dict()``: the one schema of a checkpoint's state.pt
STATE_KEYS = ("step", "epoch", "plan", "optimizer", "parts", "rng", "history", "best", "stale_evals", "stop_best",
              "skipped_steps", "scaler", "epoch_loss", "data", "data_changes", "best_checkpoint", "callbacks")


def check_state_keys(state: Any, where: str) -> None:
    """A :class:`CheckpointError` unless ``state`` holds every key of :data:`STATE_KEYS`."""
    missing = [k for k in STATE_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"{where}: not a training state saved by this version of partwise (missing "
                              f"{', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''})", missing)
_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+=-]*")
_SHOWN = 10  # mismatches shown in one error message (all are in ``CheckpointError.problems``)


def part_file_problems(names: list[str]) -> list[str]:
    """Part names that cannot name a checkpoint file (``part-<name>.safetensors``), one message each."""
    return [f"part name {n!r} cannot name a checkpoint file (part-{n}.safetensors); use letters, digits, "
            "'_', '.', '-' only, e.g. " + repr(re.sub(r"[^A-Za-z0-9_.-]", "_", n).lstrip(".") or "part")
            for n in names if not _SAFE_NAME.fullmatch(n) or len(n) > 200]


def part_tensors(model: nn.Module, parts: Parts) -> dict[str, dict[str, torch.Tensor]]:
    """The model's state dict split by part (a tied tensor once, under its first name)."""
    owner = parts.part_of()
    module_part: dict[str, str] = {}
    for part in parts:
        for path, _ in part.named_modules():
            module_part.setdefault(path, part.name)
    seen: set[int] = set()
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in model.state_dict(keep_vars=True).items():
        if not isinstance(t, torch.Tensor) or id(t) in seen:
            continue
        seen.add(id(t))
        name = owner.get(id(t)) if isinstance(t, nn.Parameter) else module_part.get(key.rpartition(".")[0], REST)
        out.setdefault(name or REST, {})[key] = t.detach()
    return out


def save_checkpoint(
    ckpt_root: str | Path,
    name: str,
    model: nn.Module,
    parts: Parts,
    state: dict[str, Any],
    meta: dict[str, Any],
    pointers: tuple[str, ...] = (LATEST,),
    keep: int = 1,
    keep_epoch_ends: int = 0,
    only: Sequence[str] | None = None,
    digests: Mapping[str, str] | None = None,
) -> Path:
    """Write checkpoint ``ckpt_root/name`` atomically and point ``pointers`` at it.

    ``only``: write these parts' tensors only; the others are recorded in ``meta.json`` by a digest of
    their tensors (``"unsaved"``), which :func:`load_weights` checks against the model it loads into;
    ``digests`` gives them already computed (parts that never train keep theirs for the whole run).

    A process killed at any moment leaves the previous complete checkpoint and its pointers intact:
    the checkpoint is written under a temporary name and renamed when complete, then each pointer is
    switched (``latest`` before ``best``, so ``best`` never names a checkpoint newer than ``latest``).
    A pointer always names a complete checkpoint: when ``name`` is one that a pointer names (a
    re-save), the new checkpoint is written beside it as ``name.1`` (or ``.2`` ...), the pointers are
    switched, and only then is the old one removed. Afterwards the checkpoints that are neither among
    the newest ``keep``, nor among the last ``keep_epoch_ends`` written at an epoch's end (those
    ``average_last`` averages), nor named by a pointer are removed. Returns the checkpoint's directory.
    """
    tensors = part_tensors(model, parts)
    if only is not None:
        known = digests or {}
        meta = {**meta, "unsaved": {p: known.get(p) or part_digest(t) for p, t in tensors.items() if p not in only}}
        tensors = {p: t for p, t in tensors.items() if p in only}
    return write_checkpoint(ckpt_root, name, tensors, state, meta, pointers, keep, keep_epoch_ends)


def part_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """A SHA-256 of a part's tensors (names, dtypes, shapes, bytes): what a checkpoint that does not
    hold the part records of it."""
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def write_checkpoint(ckpt_root: str | Path, name: str, tensors_by_part: dict[str, dict[str, torch.Tensor]],
                     state: dict[str, Any], meta: dict[str, Any], pointers: tuple[str, ...] = (LATEST,),
                     keep: int | None = 1, keep_epoch_ends: int = 0, folders: Mapping[str, Path] | None = None) -> Path:
    """:func:`save_checkpoint` from tensors already grouped by part (``keep=None``: prune nothing).
    ``folders``: finished folders moved into the checkpoint under these names before it is complete
    (e.g. the shards every rank of a sharded run wrote)."""
    bad = part_file_problems(list(tensors_by_part))
    if bad:
        raise CheckpointError("cannot write a checkpoint: " + "; ".join(bad), bad)
    root = Path(ckpt_root)
    root.mkdir(parents=True, exist_ok=True)
    tmp = _write_tmp(root, name, tensors_by_part, state, meta, folders or {})
    final = root / _free_name(root, name)
    if final.exists():  # an unpinned leftover of the same step (e.g. from a killed run): replaced
        old = root / f".{final.name}.old-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _failpoints.reached("save.renamed")
    for p in pointers:
        write_text_atomic(root / p, final.name)
        _failpoints.reached("save.pointer")
    for stale in _versions(root, name):  # earlier versions of this checkpoint, now named by no pointer
        if stale != final.name and stale not in _pinned(root):
            discard(root / stale)
    if keep is not None:
        _prune(root, keep, keep_epoch_ends)
    _failpoints.reached("save.pruned")
    return final


def _write_tmp(root: Path, name: str, tensors_by_part: dict[str, dict[str, torch.Tensor]], state: dict[str, Any],
               meta: dict[str, Any], folders: Mapping[str, Path]) -> Path:
    """The complete checkpoint in a temporary folder ``.name.tmp-<pid>``; ``meta.json`` written last."""
    tmp = root / f".{name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    _failpoints.reached("save.started")
    files = {}
    for part, tensors in tensors_by_part.items():
        fname = f"part-{part}.safetensors"
        save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, str(tmp / fname), metadata={"part": part})
        files[part] = fname
        _failpoints.reached("save.part")
    torch.save(state, tmp / STATE)
    _failpoints.reached("save.state")
    for fname, folder in folders.items():
        os.replace(folder, tmp / fname)
    (tmp / META).write_text(json.dumps({**meta, "parts": files}, indent=2, sort_keys=True), encoding="utf-8")
    _failpoints.reached("save.meta")
    return tmp


def _pinned(root: Path) -> set[str]:
    """Names of the checkpoints that ``latest`` and ``best`` name."""
    out = set()
    for p in POINTERS:
        try:
            out.add((root / p).read_text(encoding="utf-8").strip())
        except (OSError, UnicodeDecodeError):
            continue
    return out


def _versions(root: Path, name: str) -> list[str]:
    """``name`` and its re-saved versions ``name.1``, ``name.2`` ... that exist under ``root``."""
    pattern = re.compile(re.escape(name) + r"(\.[0-9]+)?")
    return sorted(d.name for d in root.iterdir() if pattern.fullmatch(d.name))


def _free_name(root: Path, name: str) -> str:
    """``name``, unless a pointer names it: then the first ``name.N`` that no pointer names."""
    pinned = _pinned(root)
    version = 0
    while (candidate := name if version == 0 else f"{name}.{version}") in pinned:
        version += 1
    return candidate


def complete_checkpoints(ckpt_root: str | Path) -> list[Path]:
    """The complete checkpoints under ``ckpt_root`` (visible folders with a ``meta.json``), by name
    (so by step): the one lister of checkpoints."""
    root = Path(ckpt_root)
    if not root.is_dir():
        return []
    return sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".") and (d / META).is_file())


def _prune(root: Path, keep: int, keep_epoch_ends: int = 0) -> None:
    """Remove the complete checkpoints that are not among the newest ``keep``, not among the last
    ``keep_epoch_ends`` epoch-end ones, and not named by a pointer."""
    kept = _pinned(root)
    complete = complete_checkpoints(root)
    kept.update(d.name for d in complete[len(complete) - keep:] if keep > 0)
    if keep_epoch_ends > 0:
        try:
            kept.update(d.name for d in epoch_end_checkpoints(root)[-keep_epoch_ends:])
        except CheckpointError:
            return  # a damaged meta.json: which to keep is unknown, so nothing is removed
    for d in complete:
        if d.name not in kept:
            discard(d)


def discard(checkpoint: Path) -> None:
    """Remove a checkpoint folder so that no kill leaves it torn under its visible name: renamed to the
    hidden ``.NAME.old-<pid>`` first (one atomic step), then deleted (a kill in between leaves debris
    that :func:`remove_debris` removes at the next start)."""
    hidden = checkpoint.parent / f".{checkpoint.name}.old-{os.getpid()}"
    try:
        os.replace(checkpoint, hidden)
    except FileNotFoundError:
        return
    _failpoints.reached("prune.renamed")
    shutil.rmtree(hidden, ignore_errors=True)


def point(ckpt_root: str | Path, pointer: str, name: str) -> None:
    """Switch ``pointer`` (``latest`` or ``best``) to the complete checkpoint ``name``, atomically."""
    root = Path(ckpt_root)
    if pointer not in POINTERS or not (root / name / META).exists():
        raise CheckpointError(f"cannot point {pointer!r} at {str(root / name)!r}: not a complete checkpoint")
    write_text_atomic(root / pointer, name)


def epoch_end_checkpoints(ckpt_root: str | Path) -> list[Path]:
    """The complete checkpoints under ``ckpt_root`` written at an epoch's end, oldest first."""
    root = Path(ckpt_root)
    found = []
    for d in complete_checkpoints(root):
        meta = read_meta(d)
        if meta.get("epoch_end") and not meta.get("averaged_from"):
            found.append((int(meta.get("step", -1)), d))
    return [d for _, d in sorted(found)]


def averaged_checkpoint(ckpt_root: str | Path, names: list[str]) -> Path | None:
    """The complete average (``averaged``, or a re-saved ``averaged.N``) of exactly the checkpoints
    ``names`` under ``ckpt_root``, if one is there."""
    root = Path(ckpt_root)
    for name in reversed(_versions(root, AVERAGED)) if root.is_dir() else []:
        try:
            if (root / name / META).exists() and read_meta(root / name).get("averaged_from") == names:
                return root / name
        except CheckpointError:
            continue  # a damaged average is written again
    return None


def drop_versions(ckpt_root: str | Path, name: str, keep: str) -> None:
    """Remove the versions of checkpoint ``name`` (``name``, ``name.1`` ...) other than ``keep`` that no
    pointer names (an average replaced by a newer one)."""
    root = Path(ckpt_root)
    for stale in _versions(root, name):
        if stale != keep and stale not in _pinned(root):
            discard(root / stale)


def tidy(ckpt_root: str | Path, keep: int = 1, keep_epoch_ends: int = 0) -> None:
    """Remove what a killed save left under ``ckpt_root``: debris (see :func:`remove_debris`) and
    the complete checkpoints :func:`save_checkpoint` would have pruned."""
    root = Path(ckpt_root)
    if root.is_dir():
        remove_debris(root)
        _prune(root, keep, keep_epoch_ends)


_DEBRIS = re.compile(r"\..+\.(?:tmp|old)-([0-9]+)(?:\.[A-Za-z0-9]+)?")
_CHECKPOINT_NAME = re.compile(r"(?:step-[0-9]+|averaged)(?:\.[0-9]+)?")


def remove_debris(folder: str | Path) -> list[str]:
    """Remove the temporary files and folders (``.NAME.tmp-<pid>``, ``.NAME.old-<pid>``) that writers
    killed in the middle of an atomic write left in ``folder`` — only those whose process is gone
    (a live process may still be writing them) — and checkpoint folders (``step-N``, ``averaged``)
    without ``meta.json``, which no write leaves visible. Returns the names removed."""
    folder = Path(folder)
    removed = []
    for entry in sorted(folder.iterdir()) if folder.is_dir() else []:
        if _CHECKPOINT_NAME.fullmatch(entry.name) and entry.is_dir() and not (entry / META).exists():
            discard(entry)  # a torn checkpoint under its visible name (never left by this version's writes)
            removed.append(entry.name)
            continue
        m = _DEBRIS.fullmatch(entry.name)
        if m is None or pid_alive(int(m.group(1))):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry.name)
    return removed


def pid_alive(pid: object, self_alive: bool = True) -> bool:
    """Whether process ``pid`` exists: the one liveness check (debris of a live writer is kept, a run
    whose creator still runs is not replaced). This process counts as alive unless ``self_alive`` is
    False (a run this very process created earlier is stale to it); a pid that is not a positive
    whole number does not exist; answers the system cannot give (another user's process, a pid too
    large to name, Windows, where ``os.kill(pid, 0)`` would end the process) count as alive."""
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        return False
    if pid == os.getpid():
        return self_alive
    if os.name == "nt":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):
        return True
    return True


def best_or_latest(path: str | Path) -> str:
    """Which checkpoint stands for run ``path``: ``"best"`` when it keeps one (a ``best`` pointer in its
    ``checkpoints/`` folder, or in ``path`` itself when that is a checkpoints folder), else ``"latest"``
    (a run trained without ``best_metric``). The one place this is decided; a damaged ``best``
    pointer is then reported, not passed over."""
    pointer = _checkpoints_root(Path(path)) / BEST
    return BEST if pointer.exists() or pointer.is_symlink() else LATEST


def _checkpoints_root(path: Path) -> Path:
    """The checkpoints folder of a run directory, or ``path`` itself (a checkpoints folder)."""
    return path / CHECKPOINTS if (path / CHECKPOINTS).is_dir() else path


def find_checkpoint(root: Path, which: str) -> Path | None:
    """The checkpoint that pointer ``which`` (``"latest"`` or ``"best"``) in checkpoints folder ``root``
    names: the one pointer resolver. A pointer that is not a file, is damaged, or names no complete
    checkpoint raises :class:`~partwise.CheckpointError` (it is never passed over); without a
    ``latest`` pointer (a kill between a checkpoint and its pointer) the newest complete checkpoint
    stands in. ``None`` when there is no such checkpoint."""
    pointer = root / which
    if pointer.exists() or pointer.is_symlink():
        if not pointer.is_file():
            raise CheckpointError(f"{pointer}: is not a file; delete it (partwise rewrites it at the next checkpoint)")
        name = pointer_target(pointer)
        if not (root / name / META).is_file():
            raise CheckpointError(f"{pointer}: names {name!r}, which is not a complete checkpoint (no {name}/{META}); "
                                  f"delete {pointer} or write the name of a checkpoint folder beside it into it "
                                  "(e.g. step-00000120)")
        return root / name
    if which == LATEST:
        complete = complete_checkpoints(root)
        return complete[-1] if complete else None
    return None


def resolve_checkpoint(checkpoint: str | Path, which: str = "latest") -> Path:
    """A checkpoint directory from a run directory, its ``checkpoints/`` folder or the checkpoint itself.

    ``which`` is ``"latest"`` or ``"best"`` (for a run directory or checkpoints folder). Raises
    :class:`~partwise.CheckpointNotFound` (a ``FileNotFoundError``) with what was looked for when there
    is none, and :class:`~partwise.CheckpointError` when the pointer is damaged.

    Examples:
        >>> import partwise as pw  # doctest: +SKIP
        >>> pw.resolve_checkpoint("runs/g2p", "best")  # doctest: +SKIP
        PosixPath('runs/g2p/checkpoints/step-00004000')
    """
    p = Path(checkpoint)
    if (p / META).exists():
        return p
    if which not in POINTERS:
        raise ValueError(f"which={which!r}: use 'latest' or 'best'")
    found = find_checkpoint(_checkpoints_root(p), which)
    if found is None:
        raise CheckpointNotFound(f"no complete checkpoint at {str(p)!r} (looked for {which!r} under {CHECKPOINTS}/ "
                                 "and in the folder itself); give a run directory written by partwise or a checkpoint "
                                 "folder")
    return found


PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")  # a file or folder right inside its own folder


def pointer_target(pointer: Path) -> str:
    """The checkpoint name a ``latest``/``best`` pointer file holds: a plain folder name beside it
    (never a path elsewhere), or :class:`~partwise.CheckpointError`."""
    fix = f"delete {pointer} or write the name of a checkpoint folder beside it into it (e.g. step-00000120)"
    try:
        name = pointer.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        raise CheckpointError(f"{pointer}: damaged (not a checkpoint name); {fix}") from None
    if not PLAIN_NAME.fullmatch(name):
        raise CheckpointError(f"{pointer}: {name[:60]!r} is not the name of a checkpoint folder beside it (a "
                              f"pointer never leaves its run); {fix}")
    return name


def read_meta(ckpt: Path) -> dict[str, Any]:
    """The checkpoint's ``meta.json``; :class:`~partwise.CheckpointError` if it is unreadable."""
    try:
        meta = json.loads((ckpt / META).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {str(ckpt)!r}: {META} is unreadable ({e}); the checkpoint is damaged, "
                              "resume from an older one") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("parts"), dict):
        raise CheckpointError(f"checkpoint {str(ckpt)!r}: {META} has no 'parts' table; it was not written by partwise")
    outside = [f for f in meta["parts"].values() if not (isinstance(f, str) and PLAIN_NAME.fullmatch(f))]
    if outside:
        raise CheckpointError(f"checkpoint {str(ckpt)!r}: {META} names part file(s) {outside[:3]} that are not files "
                              "inside the checkpoint folder; the checkpoint is damaged or not partwise's, resume from "
                              "an older one")
    return meta


def read_part(ckpt: Path, fname: str) -> dict[str, torch.Tensor]:
    """Every tensor of one part file: the one reader of checkpoint weights (``load_weights``,
    ``load_part``, resume and the CLI's checks). :class:`~partwise.CheckpointError` if the file is
    missing or damaged; its ``problems`` hold the reader's own words."""
    try:
        with safe_open(str(ckpt / fname), framework="pt") as f:
            return {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (safe_open has keys(), not iteration)
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types for damaged files
        raise CheckpointError(f"checkpoint {str(ckpt)!r}: {fname} cannot be read ({type(e).__name__}: {e}); "
                              "the checkpoint is damaged, resume from an older one", [str(e)]) from None


def tensor_problems(stored: dict[str, torch.Tensor], expected: dict[str, torch.Tensor],
                    model: dict[str, torch.Tensor], where: dict[str, str], scope: str = "the model") -> list[str]:
    """Every difference between checkpoint tensors and the model's: tensors ``expected`` but not
    stored, stored tensors not in the ``model``, and shapes and dtypes. ``where``: tensor -> part."""
    problems = []
    for k, t in stored.items():
        if k in model and tuple(t.shape) != tuple(model[k].shape):
            problems.append(f"{k}: checkpoint shape {tuple(t.shape)} vs model {tuple(model[k].shape)}")
        elif k in model and t.dtype != model[k].dtype:
            problems.append(f"{k}: checkpoint dtype {t.dtype} vs model {model[k].dtype}")
    problems += [f"{k} (part {where.get(k, '?')!r}) is missing from the checkpoint"
                 for k in expected if k not in stored]
    problems += [f"{k} is in the checkpoint but not in {scope}" for k in stored if k not in model]
    return problems


def mismatch_error(what: str, problems: list[str], fix: str) -> CheckpointError:
    """One :class:`~partwise.CheckpointError` listing (the first few of) ``problems``."""
    shown = "; ".join(problems[:_SHOWN]) + (f" (+{len(problems) - _SHOWN} more)" if len(problems) > _SHOWN else "")
    return CheckpointError(f"{what} ({len(problems)} problem(s)): {shown}; {fix}", problems)


def load_weights(model: nn.Module, parts: Parts, checkpoint: str | Path, only: list[str] | None = None,
                 strict: bool = True) -> list[str]:
    """Load the weights of ``only`` these parts (default: all) from a checkpoint into ``model``.

    Complete or refused: every tensor of the loaded parts must be in the checkpoint and every
    checkpoint tensor in the model, with the same shape and dtype. Otherwise
    :class:`~partwise.CheckpointError` lists every mismatch (``.problems``) and the model is left
    untouched. With ``strict=False`` what fits is loaded and the rest reported in a warning.
    Returns the part names loaded.

    Examples:
        >>> import tempfile
        >>> a, b = nn.Sequential(nn.Linear(2, 2)), nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
        >>> ckpt = save_checkpoint(tempfile.mkdtemp(), "step-1", a, Parts(a), {}, {})
        >>> load_weights(b, Parts(b), ckpt)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        partwise._errors.CheckpointError: checkpoint ... 1.weight (part '1') is missing from the checkpoint; ...
    """
    ckpt = resolve_checkpoint(checkpoint)
    meta = read_meta(ckpt)
    files: dict[str, str] = meta["parts"]
    unsaved: dict[str, str] = meta.get("unsaved") or {}
    wanted = list(files) if only is None else list(only)
    absent = [p for p in wanted if p not in files]
    if absent:
        held = f"; it was saved with checkpoint_parts='trained' and holds {sorted(files)}" if unsaved else ""
        raise CheckpointError(f"checkpoint {str(ckpt)!r} has no part(s) {absent}{held or f'; it has {sorted(files)}'}")
    by_part = part_tensors(model, parts)
    if only is None:
        changed = [p for p, digest in unsaved.items() if p not in by_part or part_digest(by_part[p]) != digest]
        if changed:
            raise CheckpointError(
                f"checkpoint {str(ckpt)!r} does not hold part(s) {changed} (saved with checkpoint_parts='trained'), "
                "and the model's do not hold the weights it was trained with: load them first (the run's init:, "
                "or the pretrained model it started from), then this checkpoint", changed)
    where = {k: part for part, tensors in by_part.items() for k in tensors}
    everything = {k: t for tensors in by_part.values() for k, t in tensors.items()}
    expected = ({k: t for p in wanted for k, t in by_part.get(p, {}).items()} if only is not None or unsaved
                else everything)
    stored = {k: t for part in wanted for k, t in read_part(ckpt, files[part]).items()}
    problems = tensor_problems(stored, expected, everything, where)
    if problems and strict:
        raise mismatch_error(f"checkpoint {str(ckpt)!r} does not fit this model", problems,
                             "load it into the model it was saved from, or pass strict=False to load what fits")
    if problems:
        warnings.warn(f"load_weights(strict=False): loaded what fits from {str(ckpt)!r}; not loaded "
                      f"({len(problems)}): " + "; ".join(problems), RuntimeWarning, stacklevel=2)
    with torch.no_grad():
        for key, t in stored.items():
            target = everything.get(key)
            if target is not None and target.shape == t.shape and target.dtype == t.dtype:
                target.copy_(t)
    return wanted


def load_state(ckpt: str | Path) -> dict[str, Any]:
    """The training state of a checkpoint, loaded with ``weights_only=True`` (no arbitrary unpickling):
    the one reader of ``state.pt`` (resume and the CLI's checks). :class:`~partwise.CheckpointError`
    if it is damaged; its ``problems`` hold the loader's own words."""
    path = resolve_checkpoint(ckpt) / STATE
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a truncated or foreign file
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be read ({type(e).__name__}: {e}); "
                              "the checkpoint is damaged, resume from an older one", [str(e)]) from None
