"""The package's layers: ``import partwise`` loads only the core, never model code or upper layers."""

from __future__ import annotations

import json
import subprocess
import sys

UPPER = ("partwise.seq2seq", "partwise.hf", "partwise.data", "partwise.tasks", "partwise.pretrained",
         "partwise.recipe", "partwise.cli")


def _loaded_after(statement: str) -> list[str]:
    code = f"{statement}; import sys, json; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_import_partwise_loads_only_the_core():
    loaded = _loaded_after("import partwise")
    ours = [m for m in loaded if m.startswith("partwise")]
    assert ours, loaded
    assert not [m for m in ours if m.startswith(UPPER)], ours  # no GRU/Transformer, no data, no CLI
    assert not [m for m in loaded if m.split(".")[0] in ("transformers", "sklearn", "matplotlib", "yaml")]


def test_import_seq2seq_loads_no_data_hf_or_cli():
    ours = [m for m in _loaded_after("import partwise.seq2seq") if m.startswith("partwise")]
    assert not [m for m in ours if m.startswith(UPPER[1:])], ours


