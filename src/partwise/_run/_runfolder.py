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
    PLAIN_NAME,
    best_or_latest,
    check_state_keys,
    complete_checkpoints,
    find_checkpoint,
    load_state,
    pid_alive,
    point,
    read_part,
    remove_debris,
)
from ._layout import ARTIFACTS, BEST, CACHE, CHECKPOINTS, CONFIG, LOG, MARKER, META, REPORT, RUN_LAYOUT, STATE

__all__ = ["BadFileError", "RunFolder", "Prior", "read_yaml", "read_json", "read_meta", "read_state",
           "check_weight_files"]

MARKER_FORMAT = "partwise-run/1"


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


# -- checkpoint folders ---------------------------------------------------------------------
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


# -- the run folder ---------------------------------------------------------------------------
class Prior(Enum):
    """What ``run_dir`` held before ``train``: how to create the run, and what to do if it fails."""

    NEW = "new"  # no folder: create it (and remove it if the run fails before its first checkpoint)
    EMPTY = "empty"  # an empty folder: use it (and empty it again on such a failure)
    REPLACE = "replace"  # a partwise run: remove it, then create the new one


class RunFolder:
    """One run folder: the paths of its files, its checkpoints, and creating, replacing or discarding it.

    Examples:
        >>> run = RunFolder("runs/g2p")
        >>> run.config, run.checkpoints
        (PosixPath('runs/g2p/config.yaml'), PosixPath('runs/g2p/checkpoints'))
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # -- paths ---------------------------------------------------------------------------------
    def file(self, name: str) -> Path:
        """The path of ``name``, one of the names a run folder is made of (:data:`RUN_LAYOUT`)."""
        if name not in RUN_LAYOUT:
            raise ValueError(f"{name!r} is not a name of a run folder's layout ({sorted(RUN_LAYOUT)})")
        return self.path / name

    @property
    def marker(self) -> Path:
        return self.path / MARKER

    @property
    def config(self) -> Path:
        return self.path / CONFIG

    @property
    def artifacts(self) -> Path:
        return self.path / ARTIFACTS

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def cache(self) -> Path:
        return self.path / CACHE

    @property
    def log(self) -> Path:
        return self.path / LOG

    @property
    def report(self) -> Path:
        return self.path / REPORT

    # -- what it is ----------------------------------------------------------------------------
    @classmethod
    def existing(cls, path: str | Path, command: str) -> RunFolder:
        """The run at ``path`` if it is an existing folder with a ``config.yaml``; else a :class:`BadFileError`
        that names ``partwise <command>``."""
        run = cls(path)
        if not run.path.exists():
            raise BadFileError(f"run directory {str(path)!r} does not exist; give the run_dir of a "
                               "`partwise train` run")
        if not run.path.is_dir():
            raise BadFileError(f"run directory {str(path)!r} is a file, not a folder; give the run_dir of a "
                               f"`partwise train` run to `partwise {command}`")
        if not run.config.exists():
            raise BadFileError(f"{str(path)!r} is not a run directory (no {CONFIG}); give the run_dir of a "
                               "`partwise train` run")
        return run

    def holds_run_files(self) -> bool:
        """Whether the folder holds a run's artifacts (``init:`` uses it to tell a run's checkpoint)."""
        return self.artifacts.is_file()

    def not_a_run(self) -> str | None:
        """``None`` if the folder is a partwise run that may be removed; else why it is not one."""
        entries = sorted(p.name for p in self.path.iterdir())
        foreign = [n for n in entries if not _layout_name(n)]
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            return f"it holds files that partwise did not write ({shown})"
        marker = self._marker()
        if marker is not None:
            return None if marker.get("format") == MARKER_FORMAT else f"its {MARKER} is not a partwise run marker"
        if self.marker.is_file():
            return f"its {MARKER} is not a partwise run marker"
        return f"it has no {MARKER} (the marker `partwise train` writes into every run)"

    def _marker(self) -> dict[str, Any] | None:
        try:
            marker = json.loads(self.marker.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, OSError):
            return None
        return marker if isinstance(marker, dict) else None

    def title(self) -> str | None:
        """The report title of the command that started the run (kept in its marker), if any."""
        title = (self._marker() or {}).get("title")
        return title if isinstance(title, str) and title else None

    def _creator_alive(self) -> bool:
        """Whether the process that created this run (pid in the marker) still runs (then it is not
        stale); this process's own earlier run is stale to it."""
        return pid_alive((self._marker() or {}).get("pid"), self_alive=False)

    # -- checkpoints ---------------------------------------------------------------------------
    def complete_checkpoints(self) -> list[Path]:
        return complete_checkpoints(self.checkpoints)

    def has_checkpoint(self) -> bool:
        return bool(self.complete_checkpoints())

    def best_or_latest(self) -> str:
        """``"best"`` when the run keeps a best checkpoint, else ``"latest"``."""
        return best_or_latest(self.path)

    def checkpoint(self, which: str = "latest") -> Path:
        """The checkpoint that the ``latest`` or ``best`` pointer names, checked to be complete.

        ``best`` falls back to ``latest`` in runs that keep no best checkpoint; a missing ``latest``
        pointer (a kill between a checkpoint and its pointer) falls back to the newest complete one.
        """
        which = self.best_or_latest() if which == BEST else which
        try:
            found = find_checkpoint(self.checkpoints, which)  # the one pointer resolver
        except CheckpointError as e:
            raise BadFileError(str(e)) from None
        if found is None:
            raise BadFileError(f"{str(self.path)!r} has no complete checkpoint (nothing under {CHECKPOINTS}/); the run "
                               "stopped before its first checkpoint: start it again with `partwise train`")
        return found

    def point_best(self, name: str) -> None:
        """Point ``best`` at checkpoint ``name`` of this run (atomically)."""
        point(self.checkpoints, BEST, name)

    def remove_debris(self) -> list[str]:
        """Remove what killed writers left in the folder and in its checkpoints (once they are gone)."""
        return remove_debris(self.path) + (remove_debris(self.checkpoints) if self.checkpoints.is_dir() else [])

    # -- the run's own files -------------------------------------------------------------------
    def write_config(self, text: str) -> None:
        """``config.yaml``: the resolved recipe (atomically)."""
        write_text_atomic(self.config, text)

    def write_artifacts(self, artifacts: dict[str, Any]) -> None:
        """``artifacts.json``: what the run's task kind saved to rebuild its data (vocabularies)."""
        write_text_atomic(self.artifacts, json.dumps(artifacts))

    def read_artifacts(self) -> dict[str, Any]:
        """``artifacts.json`` of the run, checked to be a mapping (the one reader; :class:`BadFileError`)."""
        fix = f"restore the run's {ARTIFACTS} (its vocabularies) from a backup or train the run again"
        saved = read_json(self.artifacts, fix)
        if not isinstance(saved, dict):
            raise BadFileError(f"{self.artifacts}: holds a JSON {type(saved).__name__}, not the run's saved mapping; "
                               f"{fix}")
        return saved

    # -- creating, replacing and discarding ------------------------------------------------------
    def plan(self, overwrite: bool) -> Prior:
        """What ``train`` will do with the folder; raises :class:`BadFileError` if it must not touch it."""
        run_dir, name = self.path, str(self.path)
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
        foreign = self.not_a_run()
        if foreign is not None:
            what = "--overwrite refused" if overwrite else "run_dir"
            raise BadFileError(f"{what}: {name!r} is not a partwise run ({foreign}), so partwise will not write into "
                               "it or remove it; set run_dir=... to a new path")
        if (not self.has_checkpoint() and self.marker.is_file() and not run_dir.is_symlink()
                and not self._creator_alive()):
            return Prior.REPLACE  # an attempt that stopped before its first checkpoint: nothing to resume
        if not overwrite:
            raise BadFileError(f"run_dir: {name!r} holds a partwise run; pass --overwrite to replace it, "
                               f"`partwise resume {run_dir}` to continue it, or set run_dir=... to another path")
        if run_dir.is_symlink():
            raise BadFileError(f"--overwrite refused: run_dir {name!r} is a symbolic link; partwise replaces only a "
                               "run folder itself: give its real path, or set run_dir=... to another path")
        return Prior.REPLACE

    def create(self, prior: Prior, recipe_source: str, title: str | None = None) -> None:
        """Remove the run being replaced, create the folder and write the run marker first (with the
        report ``title``, which a resume keeps)."""
        if prior is Prior.REPLACE:
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        info = {"format": MARKER_FORMAT, "recipe": recipe_source, "pid": os.getpid(),
                **({"title": title} if title else {}),
                "note": "written by `partwise train`; marks this folder as a run that --overwrite may replace"}
        write_text_atomic(self.marker, json.dumps(info, indent=2) + "\n")

    def discard_attempt(self, prior: Prior) -> bool:
        """After a failed ``train``: remove what it created unless a checkpoint makes it resumable.
        Returns whether the folder was cleaned up."""
        if not self.path.is_dir() or self.has_checkpoint():
            return False
        shutil.rmtree(self.path, ignore_errors=True)
        if prior is Prior.EMPTY:
            self.path.mkdir(exist_ok=True)
        return True


def _layout_name(name: str) -> bool:
    return name in RUN_LAYOUT or (name.startswith(".") and (".tmp-" in name or ".old-" in name))
