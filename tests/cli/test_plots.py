"""Plots and the markdown report, from CSV files logged by a RunLog driven with a fake trainer."""

from __future__ import annotations

import struct
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from partwise.cli._plots import make_plots
from partwise.cli._report import write_report
from partwise.cli._runlog import RunLog
from partwise.seq2seq import TeacherForcing, tf_linear

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def log_run(run_dir: Path, *, teacher_forcing: bool = True, dev_wer: bool = True, epochs: int = 4) -> list[dict]:
    """Feed a RunLog what a Trainer would for a 2-phase plan, 5 steps per epoch; return epoch metrics."""
    log = RunLog(run_dir)
    task = SimpleNamespace(teacher_forcing=TeacherForcing(tf_linear(c=0.04)) if teacher_forcing else None)
    half = epochs // 2
    phases = [SimpleNamespace(name="decoder only", epochs=half, task_options={}),
              SimpleNamespace(name="all parts", epochs=epochs - half, task_options={})]
    trainer = SimpleNamespace(rank=0, step=0, epoch=0, span=None, task=task)
    history = []
    for epoch in range(epochs):
        index = 0 if epoch < half else 1
        if trainer.span is None or trainer.span.index != index:
            start = 0 if index == 0 else half * 5
            trainer.span = SimpleNamespace(index=index, phase=phases[index], start=start,
                                           end=half * 5 if index == 0 else epochs * 5)
            log.on_phase_start(trainer, trainer.span)
        lrs = {"lr/decoder": 1e-3 * 0.9 ** epoch, **({"lr/encoder": 1e-5} if index else {})}
        for _ in range(5):
            trainer.step += 1
            log.on_step_end(trainer, {"step": trainer.step, "loss": 2.0 / trainer.step, "grad_norm": 0.0, **lrs})
        metrics = {"epoch": epoch + 1, "step": trainer.step, "phase": phases[index].name,
                   "train_loss": 1.5 / (epoch + 1), "seconds": 12.25, **lrs, "dev_loss": 1.7 / (epoch + 1)}
        if dev_wer:
            metrics.update(dev_wer=0.6 - 0.1 * epoch, dev_per=0.2 - 0.03 * epoch)
        log.on_epoch_end(trainer, metrics)
        history.append(metrics)
        trainer.epoch += 1
    log.close()
    return history


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_plots_are_valid_pngs(tmp_path):
    log_run(tmp_path)
    paths = make_plots(tmp_path)
    assert [p.name for p in paths] == ["loss.png", "lr.png", "teacher_forcing.png"]
    for path in paths:
        assert path.parent == tmp_path and path.stat().st_size > 10_000
        width, height = png_size(path)
        assert width >= 600 and height >= 250
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # temporary files renamed away


def test_metric_panel_and_teacher_forcing_plot_only_when_logged(tmp_path):
    with_wer, plain = tmp_path / "wer", tmp_path / "plain"
    log_run(with_wer)
    log_run(plain, teacher_forcing=False, dev_wer=False)
    assert [p.name for p in make_plots(plain)] == ["loss.png", "lr.png"]
    make_plots(with_wer)
    # validation WER/PER get a second panel: the figure is twice as tall
    assert png_size(with_wer / "loss.png")[1] == 2 * png_size(plain / "loss.png")[1]


def test_plots_need_a_logged_run(tmp_path):
    with pytest.raises(ValueError, match="attach a RunLog"):
        make_plots(tmp_path)
    (tmp_path / "metrics.csv").write_text("epoch,step,train_loss\n")  # stopped before an epoch ended
    assert make_plots(tmp_path) == []  # no rows yet: nothing to draw, no error
    RunLog(tmp_path).on_step_end(SimpleNamespace(span=None, task=None), {"step": 1, "loss": 1.0, "lr/a": 0.1})
    assert [p.name for p in make_plots(tmp_path)] == ["lr.png"]  # step rows are on disk at once; no epoch yet
    with pytest.raises(FileNotFoundError, match="not a folder"):
        make_plots(tmp_path / "missing")


def test_missing_matplotlib_names_the_extra(tmp_path, monkeypatch):
    log_run(tmp_path)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import now fails
    with pytest.raises(ImportError, match=r"partwise\[plots\]"):
        make_plots(tmp_path)


def test_report_embeds_plots_and_metrics(tmp_path):
    history = log_run(tmp_path)
    plots = make_plots(tmp_path)
    summary = {"test WER": 0.2412, "training time": "3.2 min", "parameters trained": {"decoder only": 1234}}
    path = write_report(tmp_path, "G2P | CMUdict", summary, plots)
    text = path.read_text()
    assert path == tmp_path / "report.md" and text.startswith("# G2P \\| CMUdict\n")
    assert "| test WER | 0.2412 |" in text and "| parameters trained · decoder only | 1,234 |" in text
    for plot in plots:  # relative links that resolve from the report's folder
        assert f"![{plot.stem}]({plot.name})" in text and (path.parent / plot.name).is_file()
    epochs_section = text.split("## Epochs")[1].split("## Plots")[0]
    table = [line for line in epochs_section.splitlines() if line.startswith("|")]
    assert table[0] == "| epoch | phase | step | train_loss | dev_loss | dev_wer | dev_per | seconds |"
    for line, m in zip(table[2:], history, strict=True):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[:3] == [str(m["epoch"]), m["phase"], str(m["step"])]
        assert [float(c) for c in cells[3:7]] == pytest.approx(
            [m["train_loss"], m["dev_loss"], m["dev_wer"], m["dev_per"]], rel=1e-3)


def test_report_of_a_long_run_elides_middle_epochs(tmp_path):
    log_run(tmp_path, epochs=60, teacher_forcing=False)
    text = write_report(tmp_path, "long", {}, []).read_text()
    epoch_rows = [line for line in text.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(epoch_rows) == 40 and epoch_rows[0].startswith("| 1 |") and epoch_rows[-1].startswith("| 60 |")
    assert "| … |" in text and "## Plots" not in text
