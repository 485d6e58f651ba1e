"""Fixtures of the CLI tests: one tiny real run per session, copied by the tests that damage it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from partwise.cli import main

from .cli_helpers import TINY, write_recipe


@pytest.fixture(scope="session")
def base_run(tmp_path_factory) -> Path:
    """A real tiny run stopped at step 3 of 6 (resumable), with metrics, logs and a best checkpoint."""
    folder = tmp_path_factory.mktemp("base")
    recipe = write_recipe(folder, {**TINY, "run_dir": str(folder / "run")})
    assert main(["train", str(recipe), "--max-steps", "3", f"run_dir={folder / 'run'}"]) == 0
    run = folder / "run"
    assert (run / "metrics.csv").is_file() and (run / "checkpoints" / "best").is_file()
    return run


@pytest.fixture(scope="session")
def finished_run(base_run: Path, tmp_path_factory) -> Path:
    """The base run resumed to the end of its plan (step 6 of 6)."""
    run = tmp_path_factory.mktemp("finished") / "run"
    shutil.copytree(base_run, run)
    assert main(["resume", str(run)]) == 0
    return run
