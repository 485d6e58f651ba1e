"""The README's Hugging Face quick start runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("transformers")

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_hf_quickstart_executes(capsys, monkeypatch, tmp_path):
    from transformers import AutoModelForSeq2SeqLM

    section = README.read_text(encoding="utf-8").split("## Hugging Face encoder–decoders", 1)[1].split("\n### ", 1)[0]
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


def test_readme_hf_trainer_and_accelerate_loop_execute(tmp_path):
    """"Inside the Hugging Face Trainer" and "In an accelerate loop", run as written, in a fresh process
    (accelerate's state is process-wide)."""
    import subprocess
    import sys

    text = README.read_text(encoding="utf-8")
    trainer = text.split("### Inside the Hugging Face Trainer", 1)[1].split("\n### ", 1)[0]
    loop = text.split("### In an accelerate loop", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", trainer, flags=re.S) + re.findall(r"```python\n(.*?)```", loop,
                                                                                   flags=re.S)
    assert len(blocks) == 2
    script = tmp_path / "readme.py"
    script.write_text("\n".join(blocks), encoding="utf-8")
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**env, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [ln for ln in proc.stdout.splitlines() if not ln.startswith("{")]
    assert "all {'embeddings': 3e-05, 'encoder': 3e-05, 'decoder': 0.003}" in lines
    assert lines[-1] == "all 12"
    assert (tmp_path / "runs" / "readme_hf_trainer" / "checkpoint-12" / "partwise_plan.json").is_file()
    assert (tmp_path / "runs" / "readme_accelerate" / "step-4" / "partwise_plan.json").is_file()
