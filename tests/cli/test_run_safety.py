"""What the command line promises about a user's files: it validates before it writes, replaces only
its own runs, leaves a run untouched unless a command succeeds, and cleans up after a failed train."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from partwise._run._layout import MARKER
from partwise.cli._runlog import read_rows
from partwise.recipe import get_kind

from .cli_helpers import NEW_RUN, TINY, run_cli, tree_hash, write_recipe


def copy_of(run: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(run, target)
    return target


def test_resume_of_a_finished_run_changes_nothing(finished_run, tmp_path, capsys):
    run = copy_of(finished_run, tmp_path)
    before = tree_hash(run)
    code, out, err = run_cli(capsys, "resume", str(run))
    assert code == 0, err
    assert "finished: step 6 of 6" in out and "nothing changed" in out
    assert tree_hash(run) == before  # report.md, logs, checkpoints: all byte-identical


def test_resume_to_a_step_already_reached_changes_nothing(base_run, tmp_path, capsys):
    run = copy_of(base_run, tmp_path)
    before = tree_hash(run)
    code, out, _ = run_cli(capsys, "resume", str(run), "--max-steps", "2")
    assert code == 0 and "already >= --max-steps 2" in out
    assert tree_hash(run) == before


def test_resume_continues_the_logs_of_an_unfinished_run(base_run, finished_run):
    _, steps = read_rows(finished_run / "steps.csv")
    _, metrics = read_rows(finished_run / "metrics.csv")
    assert [r["step"] for r in steps] == ["1", "2", "3", "4", "5", "6"]
    assert [r["epoch"] for r in metrics] == ["1", "2"]
    assert (base_run / "metrics.csv").read_text().splitlines() == (
        finished_run / "metrics.csv").read_text().splitlines()[:2]


def test_overwrite_refuses_a_folder_that_is_not_a_run_and_keeps_its_files(tmp_path, capsys):
    recipe = write_recipe(tmp_path, TINY)
    folder = tmp_path / NEW_RUN
    folder.mkdir()
    (folder / "thesis.tex").write_text("years of work")
    (folder / "checkpoints").mkdir()  # looks a little like a run, but is not one
    code, _, err = run_cli(capsys, "train", str(recipe), "--overwrite")
    assert code == 2 and "--overwrite refused" in err and "thesis.tex" in err
    assert (folder / "thesis.tex").read_text() == "years of work" and (folder / "checkpoints").is_dir()


def test_overwrite_with_a_bad_data_file_leaves_the_existing_run_intact(base_run, tmp_path, capsys):
    run = copy_of(base_run, tmp_path)
    before = tree_hash(run)
    (tmp_path / "train.tsv").write_text("cat\tK AE T\nno tab here\n")
    (tmp_path / "dev.tsv").write_text("cat\tK AE T\n")
    recipe = write_recipe(tmp_path, {**TINY, "training": {**TINY["training"], "best_metric": "seq_error"},
                                     "data": {"name": "pairs", "train": str(tmp_path / "train.tsv"),
                                              "dev": str(tmp_path / "dev.tsv")}})
    code, _, err = run_cli(capsys, "train", str(recipe), f"run_dir={run}", "--overwrite")
    assert code == 2 and "train.tsv" in err and "line 2" in err
    assert tree_hash(run) == before


def test_overwrite_replaces_a_partwise_run(base_run, tmp_path, capsys):
    run = copy_of(base_run, tmp_path)
    recipe = write_recipe(tmp_path, TINY)
    code, _, err = run_cli(capsys, "train", str(recipe), f"run_dir={run}", "--overwrite", "--max-steps", "1")
    assert code == 0, err
    assert json.loads((run / MARKER).read_text())["format"] == "partwise-run/1"
    assert [r["step"] for r in read_rows(run / "steps.csv")[1]] == ["1"]  # the new run's logs only


def test_overwrite_replaces_a_run_that_accepted_a_plan_change_or_spilled_its_cache(base_run, tmp_path, capsys):
    """plan_changes.txt (a resume with --allow-plan-change) and cache/ (the encoder cache's spill files)
    are partwise's own files: such a run is a run, not a folder of foreign files."""
    run = copy_of(base_run, tmp_path)
    (run / "plan_changes.txt").write_text("step 3: phase 1 steps 2 -> 3\n")
    (run / "cache").mkdir()
    recipe = write_recipe(tmp_path, TINY)
    code, _, err = run_cli(capsys, "train", str(recipe), f"run_dir={run}", "--overwrite", "--max-steps", "1")
    assert code == 0, err
    assert not (run / "plan_changes.txt").exists()


def test_overwrite_refuses_a_folder_without_the_run_marker(base_run, tmp_path, capsys):
    run = copy_of(base_run, tmp_path)
    (run / MARKER).unlink()
    before = tree_hash(run)
    recipe = write_recipe(tmp_path, TINY)
    code, _, err = run_cli(capsys, "train", str(recipe), f"run_dir={run}", "--overwrite", "--max-steps", "1")
    assert code == 2 and f"has no {MARKER}" in err
    assert tree_hash(run) == before


def test_a_failed_train_leaves_no_run_directory(tmp_path, capsys, monkeypatch):
    def broken_fit(self, *args, **kwargs):
        raise RuntimeError("a bug in the trainer")

    monkeypatch.setattr("partwise.cli._commands.Trainer.fit", broken_fit)
    recipe = write_recipe(tmp_path, TINY)
    code, _, err = run_cli(capsys, "train", str(recipe))
    assert code == 1  # a bug: traceback, exit 1, and a request to report it
    assert "Traceback" in err and "RuntimeError: a bug in the trainer" in err and "please report it" in err
    assert not (tmp_path / NEW_RUN).exists()


def test_an_interrupted_train_before_its_first_checkpoint_leaves_no_run_directory(tmp_path, capsys, monkeypatch):
    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("partwise.cli._commands.Trainer.fit", interrupted)
    code, _, err = run_cli(capsys, "train", str(write_recipe(tmp_path, TINY)))
    assert code == 130 and "nothing to resume" in err
    assert not (tmp_path / NEW_RUN).exists()


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_run_that_died_before_its_first_checkpoint_is_replaced_without_overwrite(base_run, tmp_path, capsys):
    run = copy_of(base_run, tmp_path)
    shutil.rmtree(run / "checkpoints")  # killed before the first checkpoint: nothing to resume
    marker = json.loads((run / MARKER).read_text())
    (run / MARKER).write_text(json.dumps({**marker, "pid": dead_pid()}))
    code, _, err = run_cli(capsys, "train", str(write_recipe(tmp_path, TINY)), f"run_dir={run}", "--max-steps", "1")
    assert code == 0, err
    assert (run / "checkpoints" / "latest").is_file()


def test_options_may_come_anywhere(base_run, tmp_path, capsys):
    run = copy_of(base_run, tmp_path)
    code, out, err = run_cli(capsys, "predict", str(run), "--beam", "3", "hello")
    assert code == 0, err
    assert out.startswith("hello\t")
    recipe = write_recipe(tmp_path, TINY)
    code, _, err = run_cli(capsys, "train", str(recipe), "--max-steps", "1", f"run_dir={tmp_path / 'x'}")
    assert code == 0, err
    assert (tmp_path / "x" / "checkpoints").is_dir() and not (tmp_path / NEW_RUN).exists()


def test_predict_reads_a_file_and_skips_blank_lines(base_run, tmp_path, capsys):
    (tmp_path / "words.txt").write_text("hello\n\n  \nworld\n")
    code, out, err = run_cli(capsys, "predict", str(base_run), "--file", str(tmp_path / "words.txt"))
    assert code == 0, err
    assert [line.split("\t")[0] for line in out.splitlines()] == ["hello", "world"]


def test_the_seq2seq_metrics_declared_for_checks_are_the_ones_logged(base_run):
    from partwise.cli._commands import read_run_config
    header, _ = read_rows(base_run / "metrics.csv")
    declared = get_kind("seq2seq").metrics_for(read_run_config(base_run))  # G2P names on CMUdict: wer, per
    assert sorted(c.removeprefix("dev_") for c in header if c.startswith("dev_")) == sorted(declared)
    assert {"wer", "per"} <= set(declared) and len(declared) == len(get_kind("seq2seq").metrics)


def test_the_digits_metrics_declared_for_checks_are_the_ones_evaluated():
    from partwise.tasks._digits import DigitsCycle, DigitsCycleTask, collate_digits, digits_splits

    _, dev, _ = digits_splits(limit=8)
    scores = DigitsCycleTask().evaluate(DigitsCycle(), [collate_digits([dev[i] for i in range(4)])], dev)
    assert sorted(scores) == sorted(get_kind("digits_cycle").metrics)


def test_the_stress_metrics_declared_for_checks_are_the_ones_evaluated():
    from partwise.tasks._stress import StressBatch, StressTask, stress_model

    src = torch.tensor([[4, 5, 3], [6, 3, 0]])
    batch = StressBatch(src, src != 0, torch.tensor([0, 1]), torch.tensor([1, 2]), torch.tensor([0, 1]))
    scores = StressTask().evaluate(stress_model(10, hidden=8, dropout=0.0).eval(), [batch])
    assert sorted(scores) == sorted(get_kind("stress").metrics)


@pytest.mark.slow
def test_console_script_bad_option_is_one_line(tmp_path):
    """In a real process too, a bad option is one line on stderr and exit code 2."""
    exe = Path(sys.executable).with_name("partwise")
    proc = subprocess.run([str(exe), "eval", str(tmp_path), "--beam", "-2"], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


@pytest.mark.parametrize("pid", [2**70, -5, True, "12"])
def test_a_marker_with_a_pid_no_process_can_have_is_handled_by_the_one_liveness_check(tmp_path, capsys, pid):
    """One liveness rule (partwise._run._checkpoint.pid_alive) for debris and run folders: a pid too large
    for the system counts as alive (not replaced behind a possible owner's back), malformed ones as
    gone; before, a pid of 2**70 crashed `train` with an OverflowError."""
    run = tmp_path / "run"
    run.mkdir()
    (run / MARKER).write_text(json.dumps({"format": "partwise-run/1", "pid": pid}))
    recipe = write_recipe(tmp_path, TINY)
    code, _, err = run_cli(capsys, "train", str(recipe), f"run_dir={run}", "--max-steps", "1")
    if pid == 2**70:
        assert code == 2 and "holds a partwise run; pass --overwrite" in err and "Traceback" not in err
    else:
        assert code == 0, err
