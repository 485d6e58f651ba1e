"""A short markdown report of a run: summary, epochs table and plots, written into the run folder."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .._run._atomic import write_text_atomic
from .._run._layout import METRICS, REPORT
from ._runlog import read_rows

__all__ = ["write_report"]

_KEY_COLUMNS = ("epoch", "phase", "step", "train_loss")  # then every dev_* column, then seconds
_MAX_EPOCH_ROWS = 40  # longer runs show the first and last epochs


def write_report(run_dir: str | Path, title: str, summary: Mapping[str, Any], plots: Sequence[str | Path]) -> Path:
    """Write ``run_dir/report.md``: the title, a table of ``summary``, the epochs and the plots.

    ``summary`` values may be numbers, strings, lists, or mappings (one row per entry, e.g.
    parameters trained per phase). The epochs table reads the key columns of ``metrics.csv``
    (epoch, phase, step, train loss, dev-set metrics, seconds). Plots are linked relative to
    ``run_dir``, so the folder can be moved or published as it is.

    Examples:
        >>> import tempfile
        >>> path = write_report(tempfile.mkdtemp(), "G2P", {"test WER": 0.2412}, [])
        >>> "| test WER | 0.2412 |" in path.read_text()
        True
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"write_report: run_dir={str(run_dir)!r} is not a folder; give the run folder")
    if not isinstance(summary, Mapping):
        raise TypeError(f"write_report: summary must be a mapping of name -> value, got {type(summary).__name__}")
    lines = [f"# {_text(title)}", ""]
    if summary:
        lines += ["## Summary", "", "| | |", "|---|---|"]
        lines += [f"| {_text(k)} | {_text(v)} |" for k, v in _flatten(summary)]
        lines.append("")
    header, rows = read_rows(run_dir / METRICS)
    if rows:
        lines += ["## Epochs", "", *_epoch_table(header, rows), ""]
    if plots:
        lines += ["## Plots", ""]
        for plot in plots:
            link = Path(os.path.relpath(Path(plot).resolve(), run_dir.resolve())).as_posix()
            lines += [f"![{Path(plot).stem}]({link})", ""]
    path = run_dir / REPORT
    write_text_atomic(path, "\n".join(lines))
    return path


def _flatten(summary: Mapping[str, Any]) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key, value in summary.items():
        if isinstance(value, Mapping):
            out += [(f"{key} · {k}", v) for k, v in value.items()]
        else:
            out.append((str(key), value))
    return out


def _epoch_table(header: list[str], rows: list[dict[str, str]]) -> list[str]:
    columns = [c for c in _KEY_COLUMNS if c in header]
    columns += [c for c in header if c.startswith("dev_")] + [c for c in ("seconds",) if c in header]
    shown: list[dict[str, str] | None] = list(rows)
    if len(rows) > _MAX_EPOCH_ROWS:
        half = _MAX_EPOCH_ROWS // 2
        shown = [*rows[:half], None, *rows[-half:]]  # None: the elided middle
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in shown:
        cells = ["…"] * len(columns) if row is None else [_cell(c, row.get(c, "")) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _cell(column: str, raw: str) -> str:
    try:
        value = float(raw)
    except ValueError:
        return _text(raw)
    if column == "seconds":
        return f"{value:.1f}"
    return str(int(value)) if column in ("epoch", "step") else f"{value:.4g}"


def _text(value: Any) -> str:
    if isinstance(value, bool):
        text = str(value)
    elif isinstance(value, int):
        text = f"{value:,}"
    elif isinstance(value, float):
        text = f"{value:.4g}"
    elif isinstance(value, list | tuple):
        text = ", ".join(_text(v) for v in value)
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")
