"""Run logging: per-epoch, per-step and per-phase CSV files in the run folder, optionally TensorBoard.

Files written under ``run_dir`` (all plain CSV with a header row, so a spreadsheet, pandas or
:func:`partwise.cli._plots.make_plots` can read them after the run):

- ``metrics.csv``: one row per epoch, the trainer's epoch metrics (``epoch`` is 1-based).
- ``steps.csv``: one row per optimizer step: ``step`` (steps done), ``loss``, ``lr/<part>``, ``tf_ratio``.
- ``phases.csv``: one row per plan phase: ``index, name, start_step, end_step, start_epoch``.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .._run._atomic import atomic_path
from .._run._layout import METRICS, PHASES, PLAN_CHANGES, STEPS, TENSORBOARD
from ..seq2seq import phase_teacher_forcing

__all__ = ["RunLog", "read_rows", "teacher_forcing_ratio", "span_steps_per_epoch"]

PHASE_COLUMNS = ("index", "name", "start_step", "end_step", "start_epoch")


# -- CSV helpers (shared with the plots and the report) ----------------------------------------
def read_rows(path: str | Path) -> tuple[list[str], list[dict[str, str]]]:
    """The header and rows of a CSV file written by :class:`RunLog` (``[], []`` if it is missing).

    Examples:
        >>> read_rows("/nonexistent/metrics.csv")
        ([], [])
    """
    path = Path(path)
    if not path.is_file():
        return [], []
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def _cell(value: Any) -> Any:
    return "" if value is None else value


def _write_atomic(path: Path, header: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> None:
    """Write the whole file to a temporary name beside it, then rename it over ``path``."""
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(header), restval="", extrasaction="ignore")
        writer.writeheader()
        writer.writerows({k: _cell(v) for k, v in r.items()} for r in rows)


def _header(path: Path) -> list[str]:
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as f:
        return next(csv.reader(f), [])


def _append(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Append ``rows``; if they bring new columns, rewrite the file with the union of columns."""
    if not rows:
        return
    header = _header(path)
    new = [k for r in rows for k in r if k not in header]
    if not header or new:
        old_header, old_rows = read_rows(path)
        union = list(dict.fromkeys([*old_header, *new]))
        _write_atomic(path, union, [*old_rows, *rows])
        return
    with path.open("a", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=header, restval="")
        writer.writerows({k: _cell(v) for k, v in r.items()} for r in rows)


def _drop_after(path: Path, column: str, step: int) -> None:
    """Drop the rows whose ``column`` is past ``step``, and rows cut short by a killed write."""
    header, rows = read_rows(path)
    kept = [r for r in rows if not _after(r.get(column, ""), step) and not _torn(r)]
    if len(kept) != len(rows):
        _write_atomic(path, header, kept)


def _torn(row: Mapping[Any, Any]) -> bool:
    """A row with fewer or more cells than the header (``csv.DictReader`` fills in ``None``)."""
    return None in row or any(v is None for v in row.values())


def _after(cell: str, step: int) -> bool:
    try:
        return float(cell) > step
    except ValueError:  # an empty or damaged cell: keep the row
        return False


# -- what the trainer exposes ------------------------------------------------------------------
def teacher_forcing_ratio(trainer: Any, step: int) -> float | None:
    """The teacher-forcing ratio in force at optimizer step ``step``, or ``None`` if there is none.

    The current phase's teacher forcing (its ``task_options``) wins over the task's own, as in the seq2seq task.

    Examples:
        >>> from types import SimpleNamespace as NS
        >>> teacher_forcing_ratio(NS(span=None, task=NS(teacher_forcing=None)), 0) is None
        True
    """
    span = getattr(trainer, "span", None)
    tf = phase_teacher_forcing(span.phase.task_options) if span is not None else None
    if tf is None:
        tf = getattr(trainer.task, "teacher_forcing", None)
    ratio = getattr(tf, "ratio", None)
    return float(ratio(max(step, 0))) if callable(ratio) else None


def span_steps_per_epoch(span: Any) -> int | None:
    """Steps per epoch, read off a span whose phase is measured in epochs (else ``None``)."""
    epochs = getattr(span.phase, "epochs", None)
    if not epochs:
        return None
    n = (span.end - span.start) // epochs
    return n if n > 0 else None


class _StepFile:
    """``steps.csv`` held open for appending: each row is written and flushed to the OS at once, so a
    killed process loses no logged step. A row with a new column rewrites the file (atomically) with
    the union of columns; :meth:`close` must be called before anything else rewrites the file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: Any = None
        self._writer: Any = None
        self._header: list[str] = []

    def write(self, row: Mapping[str, Any]) -> None:
        if self._file is None:
            self._header = _header(self.path)
        if not self._header or any(k not in self._header for k in row):
            self.close()
            _append(self.path, [row])  # creates the file or rewrites it with the new columns
            return
        if self._file is None:
            self._file = self.path.open("a", newline="", encoding="utf-8")
            self._writer = csv.DictWriter(self._file, fieldnames=self._header, restval="")
        self._writer.writerow({k: _cell(v) for k, v in row.items()})
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file = self._writer = None


class RunLog:
    """Trainer callback that logs epochs, steps and phases to CSV files in ``run_dir``.

    Each step row is appended to ``steps.csv`` and flushed as soon as the step is done, so a killed
    run loses none. A row that brings a new column (a part that starts training in phase 2 adds
    ``lr/<part>``) makes the file be rewritten with the union of columns, atomically. Only rank 0 writes.

    Nothing is written before the first step (or epoch end) is logged: until then phase rows and the
    truncation below are only noted. So a resume that fails while the trainer restores its checkpoint
    leaves every log file as it was.

    Resuming: the logs are made to describe exactly what the resumed checkpoint holds, by
    :meth:`truncate_after`, which also runs by itself at the first phase start with the trainer's step
    and history then (0 and none for a fresh run, the checkpoint's for a resumed one): step and phase
    rows logged after the checkpoint's step are dropped, and ``metrics.csv`` is rewritten from the
    checkpoint's epoch history — so a row lost by a kill between the checkpoint and its append is back.

    Args:
        run_dir: the run folder (created if needed).
        tensorboard: also write scalars to ``run_dir/tensorboard`` (needs ``partwise[tensorboard]``).

    Examples:
        >>> import tempfile
        >>> log = RunLog(tempfile.mkdtemp())
        >>> log.on_epoch_end(None, {"epoch": 1, "step": 5, "train_loss": 0.5})
        >>> read_rows(log.run_dir / "metrics.csv")[0]
        ['epoch', 'step', 'train_loss']
    """

    def __init__(self, run_dir: str | Path, tensorboard: bool = False) -> None:
        if not isinstance(tensorboard, bool):
            raise TypeError(f"RunLog tensorboard={tensorboard!r} must be True or False")
        self.run_dir = Path(run_dir)
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise ValueError(f"RunLog run_dir={str(run_dir)!r} is a file; give a folder for the run's logs")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.tensorboard = tensorboard
        self._steps = _StepFile(self.run_dir / STEPS)
        self._truncated = False
        self._pending_truncate: int | None = None  # noted at the first phase start, done at the first write
        self._pending_history: list[Mapping[str, Any]] | None = None  # the trainer's epoch history then
        self._pending_phases: list[dict[str, Any]] = []
        self._purge_step: int | None = None  # TensorBoard hides events from here on (after a resume)
        self._writer: Any = None
        if tensorboard:
            self._open_writer(check_only=True)  # a missing TensorBoard is reported now, not at the first step

    # -- trainer hooks ----------------------------------------------------------------------
    def on_phase_start(self, trainer: Any, span: Any) -> None:
        if getattr(trainer, "rank", 0) != 0:
            return
        if not self._truncated:
            self._truncated = True
            self._pending_truncate = trainer.step
            self._pending_history = [dict(m) for m in getattr(trainer, "history", None) or []]
        spe = span_steps_per_epoch(span)
        start_epoch = span.start // spe + 1 if spe else trainer.epoch + 1
        self._pending_phases.append({"index": span.index, "name": span.phase.name, "start_step": span.start,
                                     "end_step": span.end, "start_epoch": start_epoch})

    def on_plan_change(self, trainer: Any, changes: Sequence[str]) -> None:
        """A resume accepted a changed plan (``--allow-plan-change``): append it to ``plan_changes.txt``."""
        if getattr(trainer, "rank", 0) != 0:
            return
        with open(self.run_dir / PLAN_CHANGES, "a", encoding="utf-8") as f:
            f.writelines(f"{line}\n" for line in changes)

    def on_step_end(self, trainer: Any, logs: Mapping[str, Any]) -> None:
        if getattr(trainer, "rank", 0) != 0:
            return
        self._commit()
        step = int(logs["step"])
        row: dict[str, Any] = {"step": step, "loss": logs["loss"]}
        row.update((k, v) for k, v in logs.items() if k.startswith("lr/"))
        ratio = teacher_forcing_ratio(trainer, step - 1)  # logs["step"] counts the step just done
        if ratio is not None:
            row["tf_ratio"] = ratio
        self._steps.write(row)
        if self._writer is not None:
            for key, value in row.items():
                if key != "step" and _is_number(value):
                    self._writer.add_scalar(f"train/{key}", value, step)

    def on_epoch_end(self, trainer: Any, metrics: Mapping[str, Any]) -> None:
        if getattr(trainer, "rank", 0) != 0:
            return
        self._commit()
        _append(self.run_dir / METRICS, [dict(metrics)])
        if self._writer is not None:
            step = int(metrics.get("step", 0))
            for key, value in metrics.items():
                if key not in ("epoch", "step") and _is_number(value):
                    self._writer.add_scalar(key if key.startswith("lr/") else f"epoch/{key}", value, step)
            self._writer.flush()

    # -- control ----------------------------------------------------------------------------
    def _commit(self) -> None:
        """The first write: drop rows past the resumed step, write the noted phase rows, open TensorBoard."""
        if self._pending_truncate is not None:
            step, self._pending_truncate = self._pending_truncate, None
            self.truncate_after(step, self._pending_history)
        if self.tensorboard and self._writer is None:
            self._writer = self._open_writer(purge_step=self._purge_step)
        if self._pending_phases:
            rows, self._pending_phases = self._pending_phases, []
            path = self.run_dir / PHASES
            _, old = read_rows(path)
            indices = {str(r["index"]) for r in rows}
            old = [r for r in old if r.get("index") not in indices]  # a resume re-enters a phase
            _write_atomic(path, PHASE_COLUMNS, sorted([*old, *rows], key=lambda r: int(r["index"])))

    def flush(self) -> None:
        """Step rows are written as they come; kept for callers that flush before reading the files."""
        if self._writer is not None:
            self._writer.flush()

    def truncate_after(self, step: int, history: Sequence[Mapping[str, Any]] | None = None) -> None:
        """Drop every logged row past optimizer step ``step`` (call with the checkpoint's step on resume).

        Rows of ``metrics.csv`` and ``steps.csv`` with ``step > step`` and phases starting after it
        go, and so do rows a killed write cut short; TensorBoard hides events from ``step + 1`` on.
        With the checkpoint's epoch ``history`` (non-empty), ``metrics.csv`` is rewritten to hold
        exactly its rows.
        """
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"RunLog.truncate_after(step={step!r}): give the resumed checkpoint's step, an int >= 0")
        self._truncated = True
        self._pending_truncate, self._pending_history = None, None
        self._purge_step = step + 1
        self._steps.close()
        if history:
            _write_atomic(self.run_dir / METRICS, list(dict.fromkeys(k for row in history for k in row)), history)
        else:
            _drop_after(self.run_dir / METRICS, "step", step)
        _drop_after(self.run_dir / STEPS, "step", step)
        _drop_after(self.run_dir / PHASES, "start_step", step)
        if self._writer is not None:
            self._writer.close()
            self._writer = self._open_writer(purge_step=step + 1)

    def close(self) -> None:
        """Close ``steps.csv`` and the TensorBoard writer (what was logged is already on disk)."""
        self._steps.close()
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _open_writer(self, purge_step: int | None = None, check_only: bool = False) -> Any:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:  # torch raises ImportError when the tensorboard package is missing
            raise ImportError(
                "RunLog(tensorboard=True) needs TensorBoard: pip install 'partwise[tensorboard]' "
                "(or turn TensorBoard logging off)"
            ) from exc
        if check_only:
            return None
        return SummaryWriter(log_dir=str(self.run_dir / TENSORBOARD), purge_step=purge_step)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
