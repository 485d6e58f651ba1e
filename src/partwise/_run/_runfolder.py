"""The run folder's one owner: its layout, its readers (one-line errors) and its writers.

A run folder holds the marker ``partwise-run.json``, ``config.yaml`` (the resolved recipe),
``artifacts.json`` (vocabularies), ``checkpoints/`` (written by :mod:`partwise._run._checkpoint`: each
checkpoint a folder with ``meta.json``, ``state.pt`` and per-part ``.safetensors``, plus the
``latest``/``best`` pointers), the logs and report, and hidden debris of killed writers. The CLI's
commands, ``init:``, export and the task kinds read the run's files through this module; the
checkpoints themselves are read and written by :mod:`partwise._run._checkpoint`, whose lister, pointer
parser and liveness check this module uses.

Every reader here only reads. A damaged file (malformed YAML, a ``!!python`` tag, garbage JSON, a
pointer naming nothing, a truncated ``.safetensors``, a ``state.pt`` that is not a training state)
raises :class:`BadFileError`, whose message names the file, what is wrong and what to do.

How partwise knows a folder is one of its runs (so that ``--overwrite`` never deletes anything else):
``partwise train`` writes ``partwise-run.json`` first when it creates a run; a folder is a run when it
has that marker **and** holds nothing but the names a run is made of (:data:`RUN_LAYOUT`, PNG plots,
hidden temporary files). A single file of anything else — a recipe, notes, data — makes it
not a run, and it is never removed.

Creating, replacing and cleaning up a new run's folder happens only after every check has passed:
``partwise train`` decides what to do with ``run_dir`` first (:func:`plan_run_dir`, read-only), then
validates the recipe and loads the data, and only then writes (:func:`create_run_dir`):

* a missing or empty folder is used as it is;
* a partwise run (see above for how that is decided) is replaced with
  ``--overwrite``; without it the command stops and says how to continue it or where else to write;
* a run that stopped before its first checkpoint (its marker is there, no checkpoint is, and the
  process that created it is gone) is replaced without ``--overwrite``: nothing in it can be resumed;
* anything else — a file, a folder with other files — is never removed, with or without ``--overwrite``.

A ``train`` that fails before its first checkpoint removes the run directory it created
(:func:`discard_attempt`), so a corrected re-run starts cleanly.
"""

from __future__ import annotations

import json
import os
import shutil
from enum import Enum
from pathlib import Path
from typing import Any

from .._errors import CheckpointError, PartwiseError
from ._atomic import write_text_atomic
from ._checkpoint import (
    META,
    PLAIN_NAME,
    STATE,
    best_or_latest,
    check_state_keys,
    complete_checkpoints,
    load_state,
    pid_alive,
    pointer_target,
    read_part,
)

__all__ = ["BadFileError", "MARKER", "RUN_LAYOUT", "read_yaml", "read_json", "run_folder", "not_a_run",
           "has_checkpoint", "checkpoint_dir", "read_meta", "read_state", "check_weight_files", "write_marker",
           "Prior", "plan_run_dir", "create_run_dir", "discard_attempt", "CONFIG", "ARTIFACTS", "read_artifacts",
           "write_artifacts"]

MARKER = "partwise-run.json"
MARKER_FORMAT = "partwise-run/1"
RUN_LAYOUT = frozenset({MARKER, "config.yaml", "artifacts.json", "checkpoints", "metrics.csv", "steps.csv",
                        "phases.csv", "report.md", "loss.png", "lr.png", "teacher_forcing.png", "tensorboard",
                        "log.txt", "plan_changes.txt", "cache"})


class BadFileError(PartwiseError, ValueError):
    """A file the user gave or a run holds (or a run folder itself) that cannot be used as it is."""


# -- plain files -------------------------------------------------------------------------------
def _text(path: Path, what: str) -> str:
    if not path.exists():
        raise BadFileError(f"{path}: missing; {what}")
    if not path.is_file():
        raise BadFileError(f"{path}: is not a file; {what}")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise BadFileError(f"{path}: not UTF-8 text (byte {e.start}); the file is damaged, {what}") from None
    except OSError as e:
        raise BadFileError(f"{path}: cannot be read ({e.strerror}); check its permissions") from None


def read_yaml(path: str | Path, fix: str = "fix the file") -> Any:
    """Parsed YAML with :func:`yaml.safe_load`; tags such as ``!!python/object`` are refused, never run."""
    import yaml  # not at import time: ``import partwise`` loads no YAML parser

    path = Path(path)
    text = _text(path, fix)
    try:
        return yaml.safe_load(text)
    except yaml.constructor.ConstructorError as e:
        mark = e.problem_mark
        where = f" at line {mark.line + 1}" if mark else ""
        raise BadFileError(f"{path}: YAML tag{where} is not allowed ({' '.join(str(e.problem).split())}); partwise "
                           f"reads plain YAML only (no !!python tags): remove the tag") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = " ".join(str(getattr(e, "problem", None) or e).split())
        raise BadFileError(f"{path}: malformed YAML{where}: {problem}; {fix}") from None


def read_json(path: Path, fix: str) -> Any:
    text = _text(path, fix)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise BadFileError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); {fix}") from None


# -- the run's own files ----------------------------------------------------------------------
CONFIG, ARTIFACTS = "config.yaml", "artifacts.json"


def write_artifacts(run_dir: Path, artifacts: dict[str, Any]) -> None:
    """``artifacts.json``: what the run's task kind saved to rebuild its data (vocabularies)."""
    write_text_atomic(run_dir / ARTIFACTS, json.dumps(artifacts))


def read_artifacts(run_dir: Path) -> dict[str, Any]:
    """``artifacts.json`` of a run, checked to be a mapping (the one reader; :class:`BadFileError`)."""
    path = run_dir / ARTIFACTS
    fix = "restore the run's artifacts.json (its vocabularies) from a backup or train the run again"
    saved = read_json(path, fix)
    if not isinstance(saved, dict):
        raise BadFileError(f"{path}: holds a JSON {type(saved).__name__}, not the run's saved mapping; {fix}")
    return saved


# -- what a run folder is ----------------------------------------------------------------------
def run_folder(run_dir: Path, command: str) -> Path:
    """``run_dir`` if it is an existing folder with a ``config.yaml``; else a :class:`BadFileError`."""
    if not run_dir.exists():
        raise BadFileError(f"run directory {str(run_dir)!r} does not exist; give the run_dir of a `partwise train` run")
    if not run_dir.is_dir():
        raise BadFileError(f"run directory {str(run_dir)!r} is a file, not a folder; give the run_dir of a "
                           f"`partwise train` run to `partwise {command}`")
    if not (run_dir / "config.yaml").exists():
        raise BadFileError(f"{str(run_dir)!r} is not a run directory (no config.yaml); give the run_dir of a "
                           "`partwise train` run")
    return run_dir


def _layout_name(name: str) -> bool:
    return name in RUN_LAYOUT or (name.startswith(".") and (".tmp-" in name or ".old-" in name))


def not_a_run(path: Path) -> str | None:
    """``None`` if ``path`` is a partwise run folder that may be removed; else why it is not one."""
    entries = sorted(p.name for p in path.iterdir())
    foreign = [n for n in entries if not _layout_name(n)]
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        return f"it holds files that partwise did not write ({shown})"
    if (path / MARKER).is_file():
        try:
            marker = json.loads((path / MARKER).read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, OSError):
            marker = None
        if isinstance(marker, dict) and marker.get("format") == MARKER_FORMAT:
            return None
        return f"its {MARKER} is not a partwise run marker"
    return f"it has no {MARKER} (the marker `partwise train` writes into every run)"


def has_checkpoint(run_dir: Path) -> bool:
    root = run_dir / "checkpoints"
    return bool(complete_checkpoints(root))


def write_marker(run_dir: Path, recipe_source: str, title: str | None = None) -> None:

    info = {"format": MARKER_FORMAT, "recipe": recipe_source, "pid": os.getpid(), **({"title": title} if title else {}),
            "note": "written by `partwise train`; marks this folder as a run that --overwrite may replace"}
    write_text_atomic(run_dir / MARKER, json.dumps(info, indent=2) + "\n")


# -- checkpoints -------------------------------------------------------------------------------
def _pointer(root: Path, which: str) -> Path:
    pointer = root / which
    if not pointer.is_file():
        raise BadFileError(f"{pointer}: is not a file; delete it (partwise rewrites it at the next checkpoint)")
    try:
        name = pointer_target(pointer)  # the one parser of pointer files
    except CheckpointError as e:
        raise BadFileError(str(e)) from None
    if not (root / name / META).is_file():
        raise BadFileError(f"{pointer}: names {name!r}, which is not a complete checkpoint (no {name}/{META}); delete "
                           f"{pointer} or write the name of a checkpoint folder beside it into it (e.g. step-00000120)")
    return root / name


def checkpoint_dir(run_dir: Path, which: str = "latest") -> Path:
    """The checkpoint that the ``latest`` or ``best`` pointer names, checked to be complete.

    ``best`` falls back to ``latest`` in runs that keep no best checkpoint; a missing ``latest``
    pointer (a kill between a checkpoint and its pointer) falls back to the newest complete one.
    """
    root = run_dir / "checkpoints"
    which = best_or_latest(run_dir) if which == "best" else which
    if (root / which).exists() or (root / which).is_symlink():
        return _pointer(root, which)
    complete = complete_checkpoints(root)
    if complete:
        return complete[-1]
    raise BadFileError(f"{str(run_dir)!r} has no complete checkpoint (nothing under checkpoints/); the run stopped "
                       "before its first checkpoint: start it again with `partwise train`")


def read_meta(ckpt: Path) -> dict[str, Any]:
    """``meta.json`` of a checkpoint, checked: a mapping with ``step`` and the ``parts`` files."""
    path = ckpt / META
    fix = "the checkpoint is damaged: delete the checkpoint folder and resume from an older one, or retrain"
    meta = read_json(path, fix)
    parts = meta.get("parts") if isinstance(meta, dict) else None
    step = meta.get("step") if isinstance(meta, dict) else None
    if not isinstance(parts, dict) or not parts or not all(
            isinstance(k, str) and isinstance(v, str) and PLAIN_NAME.fullmatch(v) for k, v in parts.items()):
        raise BadFileError(f"{path}: has no valid 'parts' mapping (part -> .safetensors file); {fix}")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise BadFileError(f"{path}: 'step' is {step!r}, not a step count; {fix}")
    return meta


def check_weight_files(ckpt: Path, meta: dict[str, Any]) -> None:
    """Every ``.safetensors`` file the checkpoint names exists and reads whole."""
    for part, name in meta["parts"].items():
        path = ckpt / name
        if not path.is_file():
            raise BadFileError(f"{path}: missing (part {part!r} of this checkpoint); the checkpoint is incomplete: "
                               "resume from an older checkpoint or retrain")
        try:
            read_part(ckpt, name)
        except CheckpointError as e:
            why = " ".join(" ".join(e.problems).split())[:120]
            raise BadFileError(f"{path}: damaged safetensors file ({why}); the checkpoint cannot be loaded: resume "
                               "from an older checkpoint or retrain") from None


def read_state(ckpt: Path) -> dict[str, Any]:
    """``state.pt`` loaded with ``weights_only=True`` (no code runs) and checked to be a training state."""
    path = ckpt / STATE
    fix = "it cannot be resumed: delete this checkpoint folder and resume from an older one, or retrain"
    if not path.is_file():
        raise BadFileError(f"{path}: missing; {fix}")
    try:
        state = load_state(ckpt)
    except CheckpointError as e:  # refused pickles, truncation, garbage: all "not a training state"
        why = " ".join(" ".join(e.problems).split())
        why = why.split(". ")[0][:120]
        raise BadFileError(f"{path}: not a partwise training state (refused to load it: {why}); {fix}") from None
    try:
        check_state_keys(state, str(path))
    except CheckpointError as e:
        raise BadFileError(f"{e}; {fix}") from None
    step = state["step"]
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise BadFileError(f"{path}: 'step' is {step!r}, not a step count; {fix}")
    return state


# -- creating, replacing and discarding a run's folder ----------------------------------------


class Prior(Enum):
    """What ``run_dir`` held before ``train``: how to create the run, and what to do if it fails."""

    NEW = "new"  # no folder: create it (and remove it if the run fails before its first checkpoint)
    EMPTY = "empty"  # an empty folder: use it (and empty it again on such a failure)
    REPLACE = "replace"  # a partwise run: remove it, then create the new one


def plan_run_dir(run_dir: Path, overwrite: bool) -> Prior:
    """What ``train`` will do with ``run_dir``; raises :class:`BadFileError` if it must not touch it."""
    name = str(run_dir)
    if not run_dir.exists():
        if run_dir.is_symlink():
            raise BadFileError(f"run_dir: {name!r} is a broken link; remove it or set run_dir=... to another path")
        blocker = next((p for p in run_dir.parents if p.exists()), None)
        if blocker is not None and not blocker.is_dir():
            raise BadFileError(f"run_dir: {name!r} cannot be created: {str(blocker)!r} is a file; set run_dir=... "
                               "to a folder path")
        return Prior.NEW
    if not run_dir.is_dir():
        raise BadFileError(f"run_dir: {name!r} is a file, not a folder; set run_dir=... to a folder path")
    if not any(run_dir.iterdir()):
        return Prior.EMPTY
    foreign = not_a_run(run_dir)
    if foreign is not None:
        what = "--overwrite refused" if overwrite else "run_dir"
        raise BadFileError(f"{what}: {name!r} is not a partwise run ({foreign}), so partwise will not write into it "
                           "or remove it; set run_dir=... to a new path")
    if (not has_checkpoint(run_dir) and (run_dir / MARKER).is_file() and not run_dir.is_symlink()
            and not _creator_alive(run_dir)):
        return Prior.REPLACE  # an attempt that stopped before its first checkpoint: nothing to resume
    if not overwrite:
        raise BadFileError(f"run_dir: {name!r} holds a partwise run; pass --overwrite to replace it, "
                           f"`partwise resume {run_dir}` to continue it, or set run_dir=... to another path")
    if run_dir.is_symlink():
        raise BadFileError(f"--overwrite refused: run_dir {name!r} is a symbolic link; partwise replaces only a run "
                           "folder itself: give its real path, or set run_dir=... to another path")
    return Prior.REPLACE


def _creator_alive(run_dir: Path) -> bool:
    """Whether the process that created this run (pid in the marker) still runs (then it is not
    stale); this process's own earlier run is stale to it."""
    try:
        pid = json.loads((run_dir / MARKER).read_text(encoding="utf-8")).get("pid")
    except (OSError, ValueError, AttributeError):
        return False
    return pid_alive(pid, self_alive=False)


def create_run_dir(run_dir: Path, prior: Prior, recipe_source: str, title: str | None = None) -> None:
    """Remove the run being replaced, create the folder and write the run marker first (with the
    report ``title``, which a resume keeps)."""
    if prior is Prior.REPLACE:
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_marker(run_dir, recipe_source, title)


def discard_attempt(run_dir: Path, prior: Prior) -> bool:
    """After a failed ``train``: remove what it created unless a checkpoint makes it resumable.
    Returns whether the folder was cleaned up."""
    if has_checkpoint(run_dir) or not run_dir.is_dir():
        return False
    shutil.rmtree(run_dir, ignore_errors=True)
    if prior is Prior.EMPTY:
        run_dir.mkdir(exist_ok=True)
    return True
