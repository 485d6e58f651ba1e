"""A progress bar for the trainer: one tqdm bar per epoch on a terminal, one plain line per epoch elsewhere."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

from tqdm import tqdm

from ._runlog import span_steps_per_epoch, teacher_forcing_ratio

__all__ = ["ProgressBar", "epoch_line"]

_SMOOTHING = 0.9  # weight of the past in the displayed loss (exponential moving average)


def epoch_line(metrics: Mapping[str, Any]) -> str:
    """One readable line for an epoch's metrics: epoch, phase, step, train loss, val metrics, seconds.

    Examples:
        >>> epoch_line({"epoch": 2, "step": 10, "phase": "head", "train_loss": 0.51234, "seconds": 1.25,
        ...             "lr/head": 0.001, "dev_wer": 0.25})
        'epoch 2 · head · step 10 · train_loss 0.5123 · dev_wer 0.25 · 1.2s'
    """
    parts = [f"epoch {metrics.get('epoch', '?')}"]
    if "phase" in metrics:
        parts.append(str(metrics["phase"]))
    if "step" in metrics:
        parts.append(f"step {metrics['step']}")
    shown = ["train_loss"] + sorted(k for k in metrics if k.startswith("dev_"))
    parts += [f"{k} {_num(metrics[k])}" for k in shown if k in metrics]
    if "seconds" in metrics:
        parts.append(f"{float(metrics['seconds']):.1f}s")
    return " · ".join(parts)


def _num(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class ProgressBar:
    """Trainer callback showing progress: a tqdm bar per epoch, or one line per epoch when off.

    The bar (``"epoch N · <phase>"``) shows the smoothed loss, the learning rate of each part, the
    teacher-forcing ratio when there is one, and steps/s (items/s too with ``items_per_step``);
    its text is refreshed at most every ``refresh_s`` seconds. After each epoch a summary line
    (see :func:`epoch_line`) is printed. Only rank 0 prints.

    Args:
        total_steps: optimizer steps of the whole run, shown as ``step i/N`` (``None``: not shown).
        enabled: show bars; ``None``: only when ``stream`` is a terminal. When off, only the
            per-epoch line is printed, so logs in CI or files stay readable.
        stream: where to write (``None``: ``sys.stderr`` at construction time).
        steps_per_epoch: the bar's length; ``None``: read off the plan when phases are measured in
            epochs, else the bar counts without a total.
        items_per_step: examples per optimizer step (batch size x accumulation x ranks) for items/s.
        refresh_s: least seconds between updates of the bar's text.

    Examples:
        >>> import io
        >>> out = io.StringIO()
        >>> bar = ProgressBar(stream=out)  # a StringIO is no terminal: plain lines
        >>> bar.on_epoch_end(None, {"epoch": 1, "phase": "all", "train_loss": 0.5, "seconds": 2.0})
        >>> out.getvalue()
        'epoch 1 · all · train_loss 0.5 · 2.0s\\n'
    """

    def __init__(self, total_steps: int | None = None, enabled: bool | None = None, stream: TextIO | None = None,
                 *, steps_per_epoch: int | None = None, items_per_step: int | None = None,
                 refresh_s: float = 0.2) -> None:
        for name, value in (("total_steps", total_steps), ("steps_per_epoch", steps_per_epoch),
                            ("items_per_step", items_per_step)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise ValueError(f"ProgressBar {name}={value!r} must be a whole number > 0 or None")
        if enabled is not None and not isinstance(enabled, bool):
            raise TypeError(f"ProgressBar enabled={enabled!r} must be True, False or None (auto)")
        self.stream: TextIO = sys.stderr if stream is None else stream
        isatty = getattr(self.stream, "isatty", None)
        self.enabled = bool(callable(isatty) and isatty()) if enabled is None else enabled
        self.total_steps, self.steps_per_epoch = total_steps, steps_per_epoch
        self.items_per_step, self.refresh_s = items_per_step, refresh_s
        self._bar: Any = None
        self._ema, self._ema_n = 0.0, 0
        self._last_t, self._last_step = 0.0, 0

    # -- trainer hooks ----------------------------------------------------------------------
    def on_phase_start(self, trainer: Any, span: Any) -> None:
        if self.steps_per_epoch is None:
            self.steps_per_epoch = span_steps_per_epoch(span)

    def on_step_end(self, trainer: Any, logs: Mapping[str, Any]) -> None:
        if not self.enabled or getattr(trainer, "rank", 0) != 0:
            return
        step = int(logs["step"])
        loss = float(logs["loss"])
        if math.isfinite(loss):
            self._ema = _SMOOTHING * self._ema + (1 - _SMOOTHING) * loss
            self._ema_n += 1
        if self._bar is None:
            self._open(trainer, step - 1)
        self._bar.update(1)
        now = time.monotonic()
        if now - self._last_t >= self.refresh_s:
            self._bar.set_postfix_str(self._postfix(trainer, logs, step, now), refresh=False)
            self._last_t, self._last_step = now, step

    def on_epoch_end(self, trainer: Any, metrics: Mapping[str, Any]) -> None:
        if getattr(trainer, "rank", 0) != 0:
            return
        self.close()
        print(epoch_line(metrics), file=self.stream, flush=True)

    def close(self) -> None:
        """Close the open bar, if any (call after ``fit`` if it may stop mid-epoch)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    # -- pieces -----------------------------------------------------------------------------
    def _open(self, trainer: Any, steps_before: int) -> None:
        span = trainer.span
        name = span.phase.name if span is not None else "?"
        spe = self.steps_per_epoch
        done = steps_before - trainer.epoch * spe if spe else 0  # > 0 when resumed mid-epoch
        self._bar = tqdm(total=spe, initial=max(done, 0), desc=f"epoch {trainer.epoch + 1} · {name}",
                         unit="step", file=self.stream, leave=False, dynamic_ncols=True,
                         mininterval=self.refresh_s)
        self._last_t, self._last_step = time.monotonic(), steps_before

    def _postfix(self, trainer: Any, logs: Mapping[str, Any], step: int, now: float) -> str:
        parts = []
        if self.total_steps is not None:
            parts.append(f"step {step}/{self.total_steps}")
        if self._ema_n:
            parts.append(f"loss {self._ema / (1 - _SMOOTHING ** self._ema_n):.4f}")  # bias-corrected
        parts += [f"{k} {v:.2e}" for k, v in logs.items() if k.startswith("lr/")]
        ratio = teacher_forcing_ratio(trainer, step - 1)
        if ratio is not None:
            parts.append(f"tf {ratio:.3f}")
        if self.items_per_step is not None and now > self._last_t:
            rate = (step - self._last_step) * self.items_per_step / (now - self._last_t)
            parts.append(f"{rate:,.0f} items/s")
        return " ".join(parts)
