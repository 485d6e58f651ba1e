"""Shared by the CLI tests: a tiny recipe, running the CLI in-process, hashing a file tree."""

from __future__ import annotations

import hashlib
from pathlib import Path

import yaml

from partwise.cli import main

TINY = {
    "data": {"name": "cmudict", "limit": 60},  # 67 training rows: 3 steps per epoch
    "model": {"name": "gru", "args": {"emb": 8, "hidden": 16, "attention": "dot", "dropout": 0.0}},
    "separate": True,
    "plan": [
        {"name": "joint", "epochs": 1, "train": {"encoder": 3e-3, "decoder": 5e-3}},
        {"name": "decoder", "epochs": 1, "train": {"decoder": 1e-3}},
    ],
    "training": {"batch_size": 32, "best_metric": "wer"},
}
NEW_RUN = "new_run"  # where every failing `train` case points run_dir: it must never appear


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def tree_hash(root: Path) -> str:
    """Names, kinds and bytes of everything under ``root``."""
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        h.update(str(path.relative_to(root)).encode())
        h.update(b"F" + path.read_bytes() if path.is_file() and not path.is_symlink() else b"D")
    return h.hexdigest()


def write_recipe(folder: Path, recipe: dict, name: str = "tiny.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump({"run_dir": str(folder / NEW_RUN), **recipe}), encoding="utf-8")
    return path
