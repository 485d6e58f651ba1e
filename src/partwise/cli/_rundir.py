"""Creating, replacing and cleaning up a new run's directory — only after every check has passed.

``partwise train`` decides what to do with ``run_dir`` first (:func:`plan_run_dir`, read-only), then
validates the recipe and loads the data, and only then writes (:func:`create_run_dir`):

* a missing or empty folder is used as it is;
* a partwise run (see :mod:`partwise.cli._runfiles` for how that is decided) is replaced with
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

from ._runfiles import MARKER, BadFileError, has_checkpoint, not_a_run, write_marker

__all__ = ["Prior", "plan_run_dir", "create_run_dir", "discard_attempt"]


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
    """Whether the process that created this run (pid in the marker) still runs (then it is not stale)."""
    try:
        pid = json.loads((run_dir / MARKER).read_text(encoding="utf-8")).get("pid")
    except (OSError, ValueError, AttributeError):
        return False
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # it exists (another user's process): leave the folder alone
    return True


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
