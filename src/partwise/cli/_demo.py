"""``partwise demo``: G2P on CMUdict in a few minutes on a laptop CPU, showing the plan at work.

Phase 1 trains encoder and decoder with their own learning rates (two optimizers); phase 2 freezes
the encoder and fine-tunes the decoder with inverse-sigmoid scheduled sampling (two-pass).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .._errors import ConfigError
from ._commands import _say, run_recipe
from ._config import validate

__all__ = ["demo", "DEMO_RECIPE"]

MARKER = "DEMO"
# Words that are not in CMUdict, to show predictions on unseen spellings.
UNSEEN = ["partwise", "pytorch", "tokenizer", "backprop", "dataloader", "finetune", "checkpointing"]

DEMO_RECIPE = {
    "run_dir": "runs/demo",
    "seed": 0,
    "data": {"name": "cmudict", "stress": False},
    "model": {"name": "gru", "args": {"emb": 64, "hidden": 128, "bidirectional": True, "attention": "dot", "dropout": 0.1}},
    "separate": True,
    "optimizer": {"name": "adamw", "weight_decay": 0.01},
    "plan": [
        {"name": "encoder+decoder", "steps": 900, "train": {"encoder": 4e-3, "decoder": 6e-3},
         "schedule": {"warmup": 50, "decay": "cosine", "min_ratio": 0.1}},
        {"name": "decoder, scheduled sampling", "steps": 250, "train": {"decoder": 1e-3},
         "schedule": {"decay": "cosine", "min_ratio": 0.1},
         "teacher_forcing": {"schedule": {"name": "inverse_sigmoid", "k": 100}, "per": "token", "mode": "two_pass"}},
    ],
    "training": {"batch_size": 128, "grad_clip": 1.0, "best_metric": None, "max_minutes": 4.0},
}


def demo(run_dir: str = "runs/demo", minutes: float | None = None) -> int:
    path = Path(run_dir)
    if path.exists() and any(path.iterdir()):
        if not (path / MARKER).exists():
            raise ConfigError([f"--run-dir: {run_dir!r} exists and holds something other than a previous demo; "
                               "choose another --run-dir"])
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / MARKER).write_text("written by `partwise demo`; replaced by the next demo run\n", encoding="utf-8")
    raw = {**DEMO_RECIPE, "run_dir": str(path)}
    if minutes is not None:
        raw["training"] = {**raw["training"], "max_minutes": minutes}
    recipe = validate(raw, "partwise demo")
    _say("partwise demo: G2P on CMUdict (107,146 training words), encoder and decoder with their own optimizers,")
    _say("then the encoder frozen while the decoder learns with scheduled sampling.")
    run_recipe(recipe, path, title="partwise demo: G2P on CMUdict")
    from ._commands import predict

    _say("\npredictions for words not in the dictionary:")
    predict(str(path), UNSEEN, None, None)
    _say(f"\nreport: {path / 'report.md'}   plots: {path / 'loss.png'}, {path / 'lr.png'}")
    return 0
