"""The README's Hugging Face quick start runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("transformers")

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_hf_quickstart_executes(capsys, monkeypatch, tmp_path):
    from transformers import AutoModelForSeq2SeqLM

    section = README.read_text(encoding="utf-8").split("## Hugging Face encoder–decoders", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 2
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    out = capsys.readouterr().out
    assert "embeddings" in out and "dev_seq_acc" in out and "['embeddings', 'encoder', 'decoder', 'head']" in out
    again = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "runs" / "readme_t5")
    assert again.lm_head.weight is again.shared.weight  # still tied, as exported
