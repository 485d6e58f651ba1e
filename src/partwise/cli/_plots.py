"""Plots of a run, drawn from the CSV files :class:`~partwise.cli._runlog.RunLog` writes.

Uses matplotlib's Agg canvas directly (no ``pyplot``, no global backend switch), so it works on
headless machines and inside programs that use matplotlib themselves.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._run._atomic import atomic_path
from .._run._layout import METRICS, PHASES, PLOTS, STEPS
from ._runlog import read_rows

__all__ = ["make_plots"]

_LOSS, _LR, _TF = PLOTS


def make_plots(run_dir: str | Path) -> list[Path]:
    """Draw ``loss.png``, ``lr.png`` and ``teacher_forcing.png`` into ``run_dir``; return their paths.

    ``loss.png``: train and dev loss per epoch, and the other dev-set metrics (WER, PER,
    token accuracy ...) on a second panel when logged. ``lr.png``: learning rate per part per step
    (log scale). ``teacher_forcing.png``: the teacher-forcing ratio per step, only when one was
    logged. Every plot marks where each phase starts. Reads only ``metrics.csv``, ``steps.csv`` and
    ``phases.csv``, so it also works on a finished run; a plot without data (a run stopped before
    its first epoch ended) is left out. Needs ``pip install 'partwise[plots]'``.

    Examples:
        >>> make_plots(run_dir)  # doctest: +SKIP
        [PosixPath('runs/g2p/loss.png'), PosixPath('runs/g2p/lr.png')]
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"make_plots: run_dir={str(run_dir)!r} is not a folder; give a run folder")
    _, metrics = read_rows(run_dir / METRICS)
    step_header, steps = read_rows(run_dir / STEPS)
    _, phases = read_rows(run_dir / PHASES)
    if not any((run_dir / name).is_file() for name in (METRICS, STEPS, PHASES)):
        raise ValueError(f"make_plots: no {METRICS}, {STEPS} or {PHASES} in {str(run_dir)!r}; "
                         "attach a RunLog to the trainer to log the run first")
    new_figure = _figure_factory()
    out = []
    if metrics:
        out.append(_loss_plot(new_figure, metrics, phases, run_dir / _LOSS))
    lr_columns = [c for c in step_header if c.startswith("lr/")]
    if steps and lr_columns:
        out.append(_lr_plot(new_figure, steps, lr_columns, phases, run_dir / _LR))
    if steps and any(not math.isnan(v) for v in _floats(steps, "tf_ratio")):
        out.append(_tf_plot(new_figure, steps, phases, run_dir / _TF))
    return out


def _figure_factory() -> Any:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError("make_plots needs matplotlib: pip install 'partwise[plots]'") from exc

    def new_figure(rows: int = 1) -> Any:
        fig = Figure(figsize=(8, 3.2 * rows), layout="constrained")
        FigureCanvasAgg(fig)
        return fig

    return new_figure


def _floats(rows: Sequence[dict[str, str]], column: str) -> list[float]:
    out = []
    for r in rows:
        try:
            out.append(float(r.get(column) or "nan"))
        except ValueError:
            out.append(math.nan)
    return out


def _mark_phases(ax: Any, phases: Sequence[dict[str, str]], column: str, offset: float = 0.0) -> None:
    """A dashed vertical line where each phase starts, labelled with the phase's name."""
    for ph in phases:
        try:
            x = float(ph[column]) + offset
        except (KeyError, ValueError):
            continue
        ax.axvline(x, color="0.45", linestyle="--", linewidth=0.9)
        ax.text(x, 0.98, f" {ph.get('name', '')}", transform=ax.get_xaxis_transform(), rotation=90,
                va="top", ha="left", fontsize=8, color="0.3")


def _loss_plot(new_figure: Any, rows: list[dict[str, str]], phases: list[dict[str, str]], path: Path) -> Path:
    epochs = _floats(rows, "epoch")
    others = sorted(c for c in rows[0] if c.startswith("dev_") and c != "dev_loss")
    others = [c for c in others if any(not math.isnan(v) for v in _floats(rows, c))]
    fig = new_figure(2 if others else 1)
    axes = fig.subplots(2 if others else 1, 1, sharex=True, squeeze=False)[:, 0]
    for column, label in (("train_loss", "train loss"), ("dev_loss", "dev loss")):
        values = _floats(rows, column)
        if any(not math.isnan(v) for v in values):
            axes[0].plot(epochs, values, marker="o", markersize=3, label=label)
    axes[0].set_ylabel("loss")
    axes[0].set_title("loss per epoch")
    for column in others:
        axes[1].plot(epochs, _floats(rows, column), marker="o", markersize=3, label=column.removeprefix("dev_"))
    if others:
        axes[1].set_ylabel("dev metric")
    for ax in axes:
        _mark_phases(ax, phases, "start_epoch", offset=-0.5)  # the phase's first epoch starts after the previous
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper right", fontsize=8)
    axes[-1].set_xlabel("epoch")
    return _save(fig, path)


def _lr_plot(new_figure: Any, rows: list[dict[str, str]], columns: list[str], phases: list[dict[str, str]],
             path: Path) -> Path:
    fig = new_figure()
    ax = fig.subplots()
    steps = _floats(rows, "step")
    positive = False
    for column in columns:
        values = _floats(rows, column)
        positive = positive or any(v > 0 for v in values)
        ax.plot(steps, values, label=column.removeprefix("lr/"), linewidth=1.2)
    if positive:
        ax.set_yscale("log")
    ax.set(title="learning rate per part", xlabel="optimizer step", ylabel="learning rate")
    _mark_phases(ax, phases, "start_step")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="lower left", fontsize=8)
    return _save(fig, path)


def _tf_plot(new_figure: Any, rows: list[dict[str, str]], phases: list[dict[str, str]], path: Path) -> Path:
    fig = new_figure()
    ax = fig.subplots()
    ax.plot(_floats(rows, "step"), _floats(rows, "tf_ratio"), linewidth=1.2)
    ax.set(title="teacher-forcing ratio (probability of feeding the gold token)", xlabel="optimizer step",
           ylabel="ratio", ylim=(-0.02, 1.02))
    _mark_phases(ax, phases, "start_step")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    """Save under a temporary name, then rename over ``path`` (a reader never sees half a file)."""
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return path
