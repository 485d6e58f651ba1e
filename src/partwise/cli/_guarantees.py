"""What a run guaranteed, per phase: the frozen-part guard (armed? passed?) and the frozen-encoder cache
(used? why not?), kept in ``log.txt`` and the report; and ``log.txt`` itself.

``log.txt`` in the run folder is the run's text log: one line per event worth keeping after the
console scrolled away — parts started from another run (``init:``), each phase's guard and cache,
outputs that hit the decoding limit, and which checkpoint the closing figures come from.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .._run._layout import LOG
from .._train._cache import cache_blockers, supports_cache

__all__ = ["PhaseFacts", "log_line", "LOG"]



def log_line(run_dir: str | Path, text: str, echo: bool = True) -> None:
    """Append ``text`` (one line, time-stamped) to ``run_dir/log.txt``; also print it when ``echo``.

    Examples:
        >>> import tempfile, pathlib
        >>> d = tempfile.mkdtemp(); log_line(d, "hello", echo=False)
        >>> pathlib.Path(d, "log.txt").read_text().endswith("hello\\n")
        True
    """
    line = " ".join(str(text).split())
    with open(Path(run_dir) / LOG, "a", encoding="utf-8") as f:
        f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')}  {line}\n")
    if echo:
        print(line, flush=True)


def _cache_fact(trainer: Any) -> str:
    if trainer.cache is not None:
        return "used (the frozen encoder ran once; the decoder trained from its stored outputs)"
    if trainer.cache_mode == "off":
        return "not used: training.cache is off"
    task, model = trainer.task, trainer.model
    if not supports_cache(task):
        return f"not used: task {type(task).__name__} does not support it"
    if any(p.requires_grad for p in task.encoder_of(model).parameters()):
        return "not used: the encoder trains in this phase"
    blockers = cache_blockers(task, model, trainer.world)
    if blockers:
        return "not used: " + "; ".join(blockers)
    return "not used: refused (see the warning printed with the run)"


class PhaseFacts:
    """Trainer callback: per phase, frozen parts, guard and cache; written to ``log.txt`` as they happen.

    The trainer checks the guard when a phase ends (at the next phase's start and at the end of
    ``fit``); a phase whose guard was armed is ``passed`` once that check returned, ``not checked``
    if the run stopped first (``max_steps``, ``max_minutes``, an interruption: the check then runs on
    resume), and the run fails with :class:`~partwise.FrozenPartChanged` when it does not pass.
    """

    def __init__(self, run_dir: str | Path | None = None) -> None:
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.rows: list[dict[str, Any]] = []

    def on_phase_start(self, trainer: Any, span: Any) -> None:
        if getattr(trainer, "rank", 0) != 0:
            return
        self._passed()
        label = f"{span.index + 1} {span.phase.name!r}"
        if self.rows and self.rows[-1]["phase"] == label:
            return  # a resume inside this phase: its row came back with the checkpoint
        frozen = [n for n in trainer.parts.names if trainer.parts.is_frozen(n)]
        if not trainer.use_guard:
            guard = "off (training.guard: false)"
        else:
            guard = "armed" if frozen else "armed (nothing frozen)"
        row = {"phase": label, "steps": f"{span.start}-{span.end}",
               "frozen": ", ".join(frozen) or "none", "guard": guard, "cache": _cache_fact(trainer)}
        self.rows.append(row)
        self._log(f"phase {row['phase']} (steps {row['steps']}): frozen {row['frozen']}; guard {guard}; "
                  f"cache {row['cache']}")

    def on_step_end(self, trainer: Any, logs: Any) -> None:
        row = self.rows[-1] if self.rows else None
        if row is not None and row["cache"].startswith("used") and trainer.cache is None:
            row["cache"] = "used, then refused during the phase (see the warning printed with the run)"
            self._log(f"phase {row['phase']}: cache {row['cache']}")

    def finish(self, completed: bool) -> None:
        """The run's ``fit`` returned (``completed``: it ended normally, so its final guard check passed)."""
        if completed:
            self._passed()
        for row in self.rows:
            if row["guard"].startswith("armed") and "passed" not in row["guard"]:
                row["guard"] += ", not checked yet (the run stopped inside the phase; resume checks it)"

    def state_dict(self) -> dict[str, Any]:
        """The rows so far: saved with each checkpoint, so a resumed run reports every phase."""
        return {"rows": [dict(r) for r in self.rows]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rows = [dict(r) for r in state.get("rows", [])]

    def summary(self) -> dict[str, str]:
        """``{"phase 1 'x' · guard": ..., ...}`` for the report."""
        out = {}
        for row in self.rows:
            for key in ("frozen", "guard", "cache"):
                out[f"phase {row['phase']} · {key}"] = row[key]
        return out

    def _passed(self) -> None:
        if self.rows and self.rows[-1]["guard"].startswith("armed") and "passed" not in self.rows[-1]["guard"]:
            self.rows[-1]["guard"] += (", passed (frozen parts bit-identical at the end of the phase, "
                                       "or where the run stopped)")
            self._log(f"phase {self.rows[-1]['phase']}: guard passed")

    def _log(self, text: str) -> None:
        if self.run_dir is not None:
            log_line(self.run_dir, text, echo=False)

    def close(self) -> None:
        """Nothing to flush (every line is written as it happens)."""
