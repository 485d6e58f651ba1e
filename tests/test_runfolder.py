"""The run folder has one owner: its names are spelled once, its checkpoints are found by one
resolver, and the Trainer, resume and the CLI agree on what they find."""

from __future__ import annotations

import pytest
from torch import nn

import partwise as pw
from partwise._run import _layout
from partwise._run._checkpoint import save_checkpoint
from partwise._run._runfolder import BadFileError, Prior, RunFolder
from test_trainer import dataset, make


def model() -> nn.Module:
    m = nn.Module()
    m.encoder, m.decoder = nn.Linear(2, 2), nn.Linear(2, 2)
    return m


def run_with_checkpoints(tmp_path, *names: str, best: str | None = None) -> RunFolder:
    run = RunFolder(tmp_path / "run")
    run.create(Prior.NEW, "test")
    m = model()
    for name in names:
        save_checkpoint(run.checkpoints, name, m, pw.Parts(m), {}, {"step": int(name[-3:])},
                        pointers=("latest", "best") if name == best else ("latest",), keep=10)
    return run


def test_every_path_is_a_name_of_the_layout(tmp_path):
    run = RunFolder(tmp_path)
    paths = [run.marker, run.config, run.artifacts, run.checkpoints, run.cache, run.log, run.report]
    assert {p.name for p in paths} <= _layout.RUN_LAYOUT
    assert run.file(_layout.METRICS) == tmp_path / "metrics.csv"
    with pytest.raises(ValueError, match="'notes.txt' is not a name of a run folder's layout"):
        run.file("notes.txt")


def test_the_trainer_writes_its_checkpoints_where_the_run_folder_finds_them(tmp_path):
    _, _, trainer = make(run_dir=tmp_path)
    trainer.fit(dataset(48), max_steps=3)
    run = RunFolder(tmp_path)
    assert trainer.run is not None and trainer.run.checkpoints == run.checkpoints
    assert run.checkpoint("latest") == pw.resolve_checkpoint(tmp_path) == run.complete_checkpoints()[-1]


def test_a_latest_pointer_naming_a_torn_checkpoint_is_reported_by_every_reader(tmp_path):
    """One resolver: the library's resolve_checkpoint used to pass over such a pointer and pick the
    newest complete checkpoint, while the CLI refused it."""
    run = run_with_checkpoints(tmp_path, "step-001", "step-002")
    (run.checkpoints / "latest").write_text("step-009")
    with pytest.raises(pw.CheckpointError, match=r"latest: names 'step-009', which is not a complete checkpoint"):
        pw.resolve_checkpoint(run.path)
    with pytest.raises(BadFileError, match=r"latest: names 'step-009', which is not a complete checkpoint"):
        run.checkpoint("latest")


def test_without_a_latest_pointer_the_newest_complete_checkpoint_stands_in(tmp_path):
    run = run_with_checkpoints(tmp_path, "step-001", "step-002")
    (run.checkpoints / "latest").unlink()  # a kill between a checkpoint and its pointer
    assert run.checkpoint("latest").name == pw.resolve_checkpoint(run.path).name == "step-002"


def test_best_falls_back_to_latest_only_where_the_run_keeps_no_best(tmp_path):
    run = run_with_checkpoints(tmp_path, "step-001", "step-002", best="step-001")
    assert run.best_or_latest() == "best" and run.checkpoint("best").name == "step-001"
    (run.checkpoints / "best").unlink()
    assert run.best_or_latest() == "latest" and run.checkpoint("best").name == "step-002"
    with pytest.raises(pw.CheckpointNotFound, match="looked for 'best'"):
        pw.resolve_checkpoint(run.path, "best")  # asked for by name: never silently another one


def test_the_marker_keeps_the_title_and_makes_the_folder_a_run(tmp_path):
    run = RunFolder(tmp_path / "run")
    assert run.plan(overwrite=False) is Prior.NEW
    run.create(Prior.NEW, "recipes/x.yaml", title="partwise train recipes/x.yaml")
    assert run.title() == "partwise train recipes/x.yaml" and run.not_a_run() is None
    (run.path / "notes.txt").write_text("mine")
    assert "notes.txt" in (run.not_a_run() or "")
    with pytest.raises(BadFileError, match="is not a partwise run"):
        run.plan(overwrite=True)
