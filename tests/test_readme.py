"""The README's quick start runs as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def quickstart_blocks() -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_readme_quickstart_executes(capsys):
    blocks = quickstart_blocks()
    assert len(blocks) >= 2
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    out = capsys.readouterr().out
    assert "OptimizerSet(encoder=AdamW, generator=SGD)" in out
    assert "frozen" in out


def test_readme_same_plan_three_ways_executes(capsys):
    """The "same plan in any loop" blocks: the Trainer, a hand-written loop and Lightning."""
    import pytest

    pytest.importorskip("lightning")
    text = README.read_text(encoding="utf-8")
    section = text.split("### The same plan in any loop", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 4
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    assert "all True" in capsys.readouterr().out  # the hand-written loop ended in phase "all", BatchNorm training
    trainer = namespace["trainer"]
    assert trainer.global_step == 16 and trainer.callbacks[0].driver.span.phase.name == "all"
