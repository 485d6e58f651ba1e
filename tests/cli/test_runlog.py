"""Run logging and the progress bar, driven by a tiny real Trainer (a few steps on CPU)."""

from __future__ import annotations

import csv
import io
import re
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import partwise as pw
from partwise.cli._progress import ProgressBar
from partwise.cli._runlog import RunLog
from partwise.seq2seq import TeacherForcing, tf_linear

TF = TeacherForcing(tf_linear(c=0.05))  # ratio 1 - 0.05 * step, logged in phase 2 only
PLAN = pw.Plan([
    pw.Phase("head only", epochs=2, train={"head": 3e-2}),
    pw.Phase("all", epochs=2, train={"head": 3e-2, "body": 1e-2}, task_options={"teacher_forcing": TF}),
])  # 40 items / batch 8 = 5 steps per epoch: phase 0 = steps 0-9, phase 1 = steps 10-19


def loss_fn(model: nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)


def data(n: int = 40) -> TensorDataset:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(n, 4, generator=g)
    return TensorDataset(x, (x[:, 0] > 0).long())


def trainer(run_dir: Path | None, callbacks) -> pw.Trainer:
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("body", nn.Linear(4, 8))
    model.add_module("head", nn.Linear(8, 2))
    return pw.Trainer(model, pw.Parts(model), PLAN, loss_fn, batch_size=8, seed=1, run_dir=run_dir,
                      callbacks=callbacks)


def rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def test_trainer_run_logs_epochs_steps_and_phases(tmp_path):
    log = RunLog(tmp_path)
    history = trainer(None, [log]).fit(data(), data(16))
    log.close()

    header, metrics = rows(tmp_path / "metrics.csv")
    assert [int(r["epoch"]) for r in metrics] == [1, 2, 3, 4]
    assert [r["phase"] for r in metrics] == ["head only", "head only", "all", "all"]
    # lr/body first appears in epoch 3: the file was rewritten with the union of columns
    assert header[:4] == ["epoch", "step", "phase", "train_loss"] and "lr/body" in header
    assert [r["lr/body"] for r in metrics[:2]] == ["", ""]
    for row, hist in zip(metrics, history, strict=True):
        assert float(row["dev_loss"]) == hist["dev_loss"] and float(row["lr/head"]) == hist["lr/head"]
    assert float(metrics[2]["lr/body"]) == history[2]["lr/body"]

    _, steps = rows(tmp_path / "steps.csv")
    assert [int(r["step"]) for r in steps] == list(range(1, 21))
    assert all(r["lr/body"] == "" and r["tf_ratio"] == "" for r in steps[:10])
    # the ratio of the phase's schedule at the step that ran (step counts steps done)
    assert [float(r["tf_ratio"]) for r in steps[10:]] == [TF.ratio(s) for s in range(10, 20)]
    assert all(float(r["lr/body"]) > 0 for r in steps[10:])

    _, phases = rows(tmp_path / "phases.csv")
    assert [(r["index"], r["name"], r["start_step"], r["end_step"], r["start_epoch"]) for r in phases] == [
        ("0", "head only", "0", "10", "1"), ("1", "all", "10", "20", "3")]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left behind


def test_new_columns_rewrite_the_file_and_keep_old_rows_aligned(tmp_path):
    log = RunLog(tmp_path)
    log.on_epoch_end(None, {"epoch": 1, "step": 5, "train_loss": 0.9, "lr/enc": 0.1})
    log.on_epoch_end(None, {"epoch": 2, "step": 10, "train_loss": 0.7, "lr/enc": 0.1, "lr/dec": 0.2})
    log.on_epoch_end(None, {"epoch": 3, "step": 15, "train_loss": 0.5, "lr/dec": 0.3})
    header, got = rows(tmp_path / "metrics.csv")
    assert header == ["epoch", "step", "train_loss", "lr/enc", "lr/dec"]
    assert [(r["train_loss"], r["lr/enc"], r["lr/dec"]) for r in got] == [
        ("0.9", "0.1", ""), ("0.7", "0.1", "0.2"), ("0.5", "", "0.3")]


def test_resume_drops_rows_past_the_checkpoint_and_logs_each_step_once(tmp_path):
    straight = tmp_path / "straight"
    log = RunLog(straight)
    trainer(None, [log]).fit(data(), data(16))
    log.close()

    run, kept = tmp_path / "run", tmp_path / "step-10"

    class KeepCheckpoint10:  # the trainer keeps only its latest checkpoint: copy the one at step 10
        def on_epoch_end(self, tr, metrics):
            if tr.step == 10:
                shutil.copytree(run / "checkpoints" / "step-00000010", kept)

    log = RunLog(run)
    trainer(run, [log, KeepCheckpoint10()]).fit(data(), data(16))  # then resumed at step 10, as after a crash
    log.close()
    log = RunLog(run)
    trainer(run, [log]).fit(data(), data(16), resume=kept)
    log.close()

    assert (run / "steps.csv").read_text() == (straight / "steps.csv").read_text()  # resume is bit-identical
    _, metrics = rows(run / "metrics.csv")
    _, expected = rows(straight / "metrics.csv")
    assert [r["epoch"] for r in metrics] == ["1", "2", "3", "4"]
    assert [r["dev_loss"] for r in metrics] == [r["dev_loss"] for r in expected]
    assert (run / "phases.csv").read_text() == (straight / "phases.csv").read_text()


def test_truncate_after_keeps_rows_up_to_the_step(tmp_path):
    log = RunLog(tmp_path)
    fake = SimpleNamespace(rank=0, span=None, task=SimpleNamespace(), step=0, epoch=0)
    for step in range(1, 9):
        log.on_step_end(fake, {"step": step, "loss": 1.0 / step, "lr/dec": 0.1})
        if step % 4 == 0:
            log.on_epoch_end(fake, {"epoch": step // 4, "step": step, "train_loss": 0.5})
    log.on_step_end(fake, {"step": 9, "loss": 0.1, "lr/dec": 0.1})  # still buffered
    log.truncate_after(4)
    log.flush()
    assert [r["step"] for r in rows(tmp_path / "steps.csv")[1]] == ["1", "2", "3", "4"]
    assert [r["step"] for r in rows(tmp_path / "metrics.csv")[1]] == ["4"]
    with pytest.raises(ValueError, match="truncate_after"):
        log.truncate_after(-1)


def test_other_ranks_write_nothing(tmp_path):
    log = RunLog(tmp_path)
    fake = SimpleNamespace(rank=1, span=None, task=SimpleNamespace(), step=0, epoch=0)
    log.on_step_end(fake, {"step": 1, "loss": 1.0})
    log.on_epoch_end(fake, {"epoch": 1, "step": 1, "train_loss": 1.0})
    log.close()
    assert not (tmp_path / "metrics.csv").exists() and not (tmp_path / "steps.csv").exists()


def test_tensorboard_scalars_are_written(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log = RunLog(tmp_path, tensorboard=True)
    history = trainer(None, [log]).fit(data(), data(16))
    log.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    val = events.Scalars("epoch/dev_loss")
    assert [e.step for e in val] == [5, 10, 15, 20]
    assert [e.value for e in val] == pytest.approx([h["dev_loss"] for h in history])
    assert len(events.Scalars("train/loss")) == 20 and len(events.Scalars("train/lr/body")) == 10


def test_missing_tensorboard_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import now fails
    with pytest.raises(ImportError, match=r"partwise\[tensorboard\]"):
        RunLog(tmp_path, tensorboard=True)


def test_disabled_progress_prints_one_line_per_epoch():
    out = io.StringIO()
    bar = ProgressBar(stream=out)  # a StringIO is not a terminal: bars are off
    assert not bar.enabled
    history = trainer(None, [bar]).fit(data(), data(16))
    lines = out.getvalue().splitlines()
    assert len(lines) == 4
    for i, (line, hist) in enumerate(zip(lines, history, strict=True), start=1):
        assert line.startswith(f"epoch {i} · {hist['phase']} · step {5 * i} · train_loss ")
        assert f"dev_loss {hist['dev_loss']:.4g}" in line and line.endswith("s")


def test_enabled_progress_draws_a_bar_per_epoch_with_phase_lr_and_ratio():
    out = io.StringIO()
    bar = ProgressBar(total_steps=20, enabled=True, stream=out, refresh_s=0.0, items_per_step=8)
    trainer(None, [bar]).fit(data(), data(16))
    text = out.getvalue()
    assert "epoch 1 · head only" in text and "epoch 4 · all" in text
    assert "5/5" in text and "lr/body" in text and "tf 0.5" in text and "items/s" in text
    # the bar is cleared at each epoch end (terminal lines are rewritten after "\r"); the summary stays
    summaries = [line for line in re.split(r"[\r\n]", text) if "train_loss" in line]
    assert [line.split(" · ")[0] for line in summaries] == ["epoch 1", "epoch 2", "epoch 3", "epoch 4"]


def test_progress_rejects_bad_arguments():
    with pytest.raises(ValueError, match="total_steps=0"):
        ProgressBar(total_steps=0)
    with pytest.raises(TypeError, match="enabled='yes'"):
        ProgressBar(enabled="yes")


def test_step_rows_are_on_disk_as_soon_as_the_step_is_done(tmp_path):
    """A run killed mid-epoch keeps every step it logged (resume drops the ones past its checkpoint)."""
    log = RunLog(tmp_path)
    fake = SimpleNamespace(rank=0, span=None, task=SimpleNamespace(), step=0, epoch=0)
    for step in (1, 2, 3):
        log.on_step_end(fake, {"step": step, "loss": 1.0, "lr/dec": 0.1})
        assert [r["step"] for r in rows(tmp_path / "steps.csv")[1]] == [str(s) for s in range(1, step + 1)]
    log.on_step_end(fake, {"step": 4, "loss": 1.0, "lr/dec": 0.1, "lr/enc": 0.2})  # a new column: file rewritten
    log.on_step_end(fake, {"step": 5, "loss": 1.0, "lr/dec": 0.1, "lr/enc": 0.2})
    header, logged = rows(tmp_path / "steps.csv")
    assert header == ["step", "loss", "lr/dec", "lr/enc"] and [r["step"] for r in logged] == ["1", "2", "3", "4", "5"]
    log.close()


def test_a_log_that_saw_no_step_writes_nothing(tmp_path):
    """A resume that fails while the trainer restores its checkpoint leaves the logs as they were."""
    (tmp_path / "steps.csv").write_text("step,loss\n1,0.5\n2,0.4\n")
    (tmp_path / "phases.csv").write_text("index,name,start_step,end_step,start_epoch\n0,a,0,4,1\n")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    log = RunLog(tmp_path)
    span = SimpleNamespace(index=0, start=0, end=4, phase=SimpleNamespace(name="a", epochs=None, task_options={}))
    log.on_phase_start(SimpleNamespace(rank=0, step=1, epoch=0), span)  # would truncate after step 1
    log.close()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_a_resume_rebuilds_metrics_from_the_checkpoint_and_drops_torn_step_rows(tmp_path):
    """A kill between the epoch-end checkpoint and the metrics row, and one in the middle of a step row."""
    straight = tmp_path / "straight"
    log = RunLog(straight)
    trainer(straight, [log]).fit(data(), data(16))
    log.close()

    run = tmp_path / "run"
    log = RunLog(run)
    trainer(run, [log]).fit(data(), data(16), max_steps=10)
    log.close()
    kept = run / "metrics.csv"
    kept.write_text("".join(kept.read_text().splitlines(keepends=True)[:-1]))  # epoch 2's row never written
    with (run / "steps.csv").open("a") as f:
        f.write("11,0.5")  # the next step's row, cut short

    log = RunLog(run)
    trainer(run, [log]).fit(data(), data(16), resume=run)
    log.close()
    assert (run / "steps.csv").read_text() == (straight / "steps.csv").read_text()
    drop = {"seconds"}
    assert [{k: v for k, v in r.items() if k not in drop} for r in rows(run / "metrics.csv")[1]] == [
        {k: v for k, v in r.items() if k not in drop} for r in rows(straight / "metrics.csv")[1]]
