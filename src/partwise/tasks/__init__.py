"""Ready-made task kinds for the ``partwise`` CLI (``task.name`` in a recipe).

Names load lazily, so importing one task kind never imports another's dependencies.

Examples:
    >>> from partwise.tasks import word_stress_labels
    >>> word_stress_labels([["AH0", "B", "AW1", "T"]])  # "about": stress on syllable 1 (from 0) of 2
    (1, 2)
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    **dict.fromkeys(("StressBatch", "StressDataset", "StressHead", "StressKind", "StressLogits", "StressModel",
                     "StressTask", "collate_stress", "stress_model", "word_stress_labels"), "._stress"),
    **dict.fromkeys(("DigitsBatch", "DigitsCycle", "DigitsCycleKind", "DigitsCycleTask", "DigitsDataset",
                     "collate_digits", "digits_splits", "seeded_reset"), "._digits"),
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'partwise.tasks' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name], __name__), name)


def __dir__() -> list[str]:
    return __all__
