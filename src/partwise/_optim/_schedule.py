"""Learning-rate schedules applied per param group: warmup, then cosine, linear or constant.

Each group carries its own ``base_lr`` and the step it joined at, so a part that joins at a phase
transition gets its own warmup, and the schedule covers every group present at each step — groups
added mid-run included (the failure behind HF transformers #20029 and Lightning #8720).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

__all__ = ["LRSchedule"]

Decay = Literal["cosine", "linear", "constant"]


@dataclass(frozen=True)
class LRSchedule:
    """``lr(t) = base_lr * factor(t)``, with ``t`` counted from when a group joined the phase.

    Args:
        warmup: steps of linear warmup from ``base_lr / warmup`` up to ``base_lr``.
        decay: after warmup, ``"cosine"`` (half cosine to ``min_ratio * base_lr`` at the end of the
            phase), ``"linear"`` (straight line to the same floor) or ``"constant"``.
        min_ratio: the floor, as a fraction of ``base_lr``.

    Examples:
        >>> s = LRSchedule(warmup=10, decay="linear", min_ratio=0.0)
        >>> [round(s.factor(t, total=110), 3) for t in (0, 9, 10, 60, 110)]
        [0.1, 1.0, 1.0, 0.5, 0.0]
    """

    warmup: int = 0
    decay: Decay = "constant"
    min_ratio: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.warmup, int) or self.warmup < 0:
            raise ValueError(f"warmup={self.warmup!r} must be a whole number of steps >= 0")
        if self.decay not in ("cosine", "linear", "constant"):
            raise ValueError(f"decay={self.decay!r} is not a schedule; use 'cosine', 'linear' or 'constant'")
        if not 0.0 <= self.min_ratio <= 1.0:
            raise ValueError(f"min_ratio={self.min_ratio!r} must be in [0, 1]")

    def factor(self, t: int, total: int, warm: bool = True) -> float:
        """The multiplier at step ``t`` (0-based) of a span of ``total`` steps (``warm=False``: no warmup)."""
        if warm and self.warmup and t < self.warmup:
            return (t + 1) / self.warmup
        if self.decay == "constant":
            return 1.0
        span = max(1, total - self.warmup)
        progress = min(1.0, max(0.0, (t - self.warmup) / span))
        shape = 0.5 * (1.0 + math.cos(math.pi * progress)) if self.decay == "cosine" else 1.0 - progress
        return self.min_ratio + (1.0 - self.min_ratio) * shape

    def apply(self, param_groups: list[dict[str, Any]], step: int, phase_end: int) -> None:
        """Set ``lr`` of every group for global ``step``.

        Groups carry ``base_lr``, ``start_step`` (where their span began) and ``warm`` (whether they
        warm up: parts that just joined do, parts continuing from the previous phase do not).
        """
        for g in param_groups:
            start = g.setdefault("start_step", step)
            g["lr"] = g["base_lr"] * self.factor(step - start, phase_end - start, g.get("warm", True))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
