"""Reading a run directory's files with one-line errors, and telling a partwise run from other folders.

Every reader here only reads. A damaged file (malformed YAML, a ``!!python`` tag, garbage JSON, a
pointer naming nothing, a truncated ``.safetensors``, a ``state.pt`` that is not a training state)
raises :class:`BadFileError`, whose message names the file, what is wrong and what to do.

How partwise knows a folder is one of its runs (so that ``--overwrite`` never deletes anything else):
``partwise train`` writes ``partwise-run.json`` first when it creates a run; a folder is a run when it
has that marker (or, for runs written before the marker existed, both ``config.yaml`` and
``artifacts.json``) **and** holds nothing but the names a run is made of (:data:`RUN_LAYOUT`, PNG
plots, hidden temporary files). A single file of anything else — a recipe, notes, data — makes it
not a run, and it is never removed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

from .._atomic import write_text_atomic
from .._checkpoint import PLAIN_NAME, best_or_latest, load_state, read_part
from .._errors import CheckpointError, PartwiseError

__all__ = ["BadFileError", "MARKER", "RUN_LAYOUT", "read_yaml", "read_json", "run_folder", "not_a_run",
           "has_checkpoint", "checkpoint_dir", "read_meta", "read_state", "check_weight_files", "write_marker"]

MARKER = "partwise-run.json"
MARKER_FORMAT = "partwise-run/1"
RUN_LAYOUT = frozenset({MARKER, "config.yaml", "artifacts.json", "checkpoints", "metrics.csv", "steps.csv",
                        "phases.csv", "report.md", "loss.png", "lr.png", "teacher_forcing.png", "tensorboard",
                        "log.txt"})
STATE_KEYS = ("step", "epoch", "plan", "optimizer", "parts", "rng", "history", "best", "stale_evals",
              "skipped_steps", "epoch_loss")


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
    return name in RUN_LAYOUT or (name.startswith(".") and ".tmp-" in name)


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
    if (path / "config.yaml").is_file() and (path / "artifacts.json").is_file():
        return None  # a run written before the marker existed
    return f"it has no {MARKER} (the marker `partwise train` writes into every run)"


def has_checkpoint(run_dir: Path) -> bool:
    root = run_dir / "checkpoints"
    return root.is_dir() and any(d.is_dir() and not d.name.startswith(".") and (d / "meta.json").is_file()
                                 for d in root.iterdir())


def write_marker(run_dir: Path, recipe_source: str, title: str | None = None) -> None:

    info = {"format": MARKER_FORMAT, "recipe": recipe_source, "pid": os.getpid(), **({"title": title} if title else {}),
            "note": "written by `partwise train`; marks this folder as a run that --overwrite may replace"}
    write_text_atomic(run_dir / MARKER, json.dumps(info, indent=2) + "\n")


# -- checkpoints -------------------------------------------------------------------------------
def _pointer(root: Path, which: str) -> Path:
    pointer = root / which
    if not pointer.is_file():
        raise BadFileError(f"{pointer}: is not a file; delete it (partwise rewrites it at the next checkpoint)")
    fix = f"delete {pointer} or write the name of a checkpoint folder of {root} into it (e.g. step-00000120)"
    try:
        name = pointer.read_text(encoding="utf-8").strip()
    except (UnicodeDecodeError, OSError):
        raise BadFileError(f"{pointer}: damaged (not a checkpoint name); {fix}") from None
    if not PLAIN_NAME.fullmatch(name):
        raise BadFileError(f"{pointer}: {name[:40]!r} is not a checkpoint name; {fix}")
    target = root / name
    if not (target / "meta.json").is_file():
        raise BadFileError(f"{pointer}: names {name!r}, which is not a complete checkpoint "
                           f"(no {name}/meta.json); {fix}")
    return target


def checkpoint_dir(run_dir: Path, which: str = "latest") -> Path:
    """The checkpoint that the ``latest`` or ``best`` pointer names, checked to be complete.

    ``best`` falls back to ``latest`` in runs that keep no best checkpoint; a missing ``latest``
    pointer (a kill between a checkpoint and its pointer) falls back to the newest complete one.
    """
    root = run_dir / "checkpoints"
    which = best_or_latest(run_dir) if which == "best" else which
    if (root / which).exists() or (root / which).is_symlink():
        return _pointer(root, which)
    if has_checkpoint(run_dir):
        return sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")
                      and (d / "meta.json").is_file())[-1]
    raise BadFileError(f"{str(run_dir)!r} has no complete checkpoint (nothing under checkpoints/); the run stopped "
                       "before its first checkpoint: start it again with `partwise train`")


def read_meta(ckpt: Path) -> dict[str, Any]:
    """``meta.json`` of a checkpoint, checked: a mapping with ``step`` and the ``parts`` files."""
    path = ckpt / "meta.json"
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
    path = ckpt / "state.pt"
    fix = "it cannot be resumed: delete this checkpoint folder and resume from an older one, or retrain"
    if not path.is_file():
        raise BadFileError(f"{path}: missing; {fix}")
    try:
        state = load_state(ckpt)
    except CheckpointError as e:  # refused pickles, truncation, garbage: all "not a training state"
        why = " ".join(" ".join(e.problems).split())
        why = why.split(". ")[0][:120]
        raise BadFileError(f"{path}: not a partwise training state (refused to load it: {why}); {fix}") from None
    missing = [k for k in STATE_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise BadFileError(f"{path}: not a partwise training state (missing {', '.join(missing[:4])}); {fix}")
    step = state["step"]
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise BadFileError(f"{path}: 'step' is {step!r}, not a step count; {fix}")
    return state
