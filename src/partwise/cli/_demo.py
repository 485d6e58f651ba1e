"""``partwise demo``: partwise's point on real data in a few minutes on a laptop CPU.

1. G2P on CMUdict: encoder and decoder with their own optimizers and learning rates, then the encoder
   frozen while the decoder learns with inverse-sigmoid scheduled sampling (two-pass).
2. Retargeting: g2p-en's pretrained encoder kept and frozen, a new stress/syllable head trained from
   cached encoder outputs, then the encoder unfrozen at 1/100 of the head's learning rate.
3. A frozen encoder inside the loss: a generator trained through it on scikit-learn digits, the
   encoder checked bit-identical by the guard.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from .._errors import ConfigError
from ._commands import _say, format_metrics, predict, run_recipe
from ._config import validate

__all__ = ["demo", "DEMO_RECIPES"]

MARKER = "DEMO"
# Words that are not in CMUdict, to show predictions on unseen spellings.
UNSEEN = ["partwise", "pytorch", "tokenizer", "backprop", "dataloader", "finetune", "checkpointing"]

G2P: dict[str, Any] = {
    "data": {"name": "cmudict", "stress": False},
    "model": {"name": "gru",
              "args": {"emb": 64, "hidden": 128, "bidirectional": True, "attention": "dot", "dropout": 0.1}},
    "separate": True,
    "optimizer": {"name": "adamw", "weight_decay": 0.01},
    "plan": [
        {"name": "encoder+decoder", "steps": 700, "train": {"encoder": 4e-3, "decoder": 6e-3},
         "schedule": {"warmup": 50, "decay": "cosine", "min_ratio": 0.1}},
        {"name": "decoder, scheduled sampling", "steps": 150, "train": {"decoder": 1e-3},
         "schedule": {"decay": "cosine", "min_ratio": 0.1},
         "teacher_forcing": {"schedule": {"name": "inverse_sigmoid", "k": 100}, "per": "token", "mode": "two_pass"}},
    ],
    "training": {"batch_size": 128, "grad_clip": 1.0, "best_metric": None, "max_minutes": 2.2},
}
STRESS = {
    "task": {"name": "stress", "args": {"encoder": "g2p_en"}},
    "data": {"name": "cmudict", "limit": 30000},
    "model": {"name": "gru", "args": {"hidden": 128, "dropout": 0.1}},
    "plan": [
        {"name": "frozen encoder", "epochs": 2, "train": {"decoder": 3e-3}, "schedule": {"decay": "cosine"}},
        {"name": "unfrozen", "steps": 60, "train": {"decoder": 1e-3, "encoder": 1e-5}},
    ],
    "training": {"batch_size": 128, "cache": "on", "guard": True, "best_metric": None, "max_minutes": 1.0},
}
DIGITS = {
    "task": {"name": "digits_cycle", "args": {"autoencoder_phases": ["autoencoder"]}},
    "data": {"name": "digits"},
    "model": {"name": "mlp", "args": {"latent": 16, "hidden": 64, "dropout": 0.1}},
    "plan": [
        {"name": "autoencoder", "epochs": 15, "train": {"encoder": 3e-3, "decoder": 3e-3}},
        {"name": "cycle", "epochs": 15, "train": {"generator": 3e-3}},
    ],
    "training": {"batch_size": 64, "cache": "on", "guard": True, "best_metric": None, "threads": 1,
                 "max_minutes": 0.75},
}
DEMO_RECIPES = {"g2p": G2P, "retarget_stress": STRESS, "digits_cycle": DIGITS}


def _fresh(path: Path) -> None:
    if path.exists() and any(path.iterdir()):
        if not (path / MARKER).exists():
            raise ConfigError([f"--run-dir: {str(path)!r} exists and holds something other than a previous demo; "
                               "choose another --run-dir"])
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / MARKER).write_text("written by `partwise demo`; replaced by the next demo run\n", encoding="utf-8")


def _run(name: str, raw: dict[str, Any], root: Path, title: str) -> dict[str, Any]:
    run_dir = root / name
    run_dir.mkdir(parents=True, exist_ok=True)
    recipe = validate({**raw, "run_dir": str(run_dir), "seed": 0}, f"partwise demo ({name})")
    return run_recipe(recipe, run_dir, title=title)


def demo(run_dir: str = "runs/demo", minutes: float | None = None) -> int:
    root = Path(run_dir)
    _fresh(root)
    t0 = time.perf_counter()
    g2p = dict(G2P)
    if minutes is not None:
        g2p["training"] = {**G2P["training"], "max_minutes": minutes}
    _say("== 1/3  G2P on CMUdict (107,146 training words): encoder and decoder with their own optimizers,")
    _say("        then the encoder frozen while the decoder learns with scheduled sampling")
    results = {"g2p": _run("g2p", g2p, root, "partwise demo: G2P on CMUdict")}
    _say("\npredictions for words not in the dictionary:")
    predict(str(root / "g2p"), UNSEEN, None, None)
    _say("\n== 2/3  Retarget g2p-en's pretrained encoder: frozen (cached outputs), new stress/syllable head,")
    _say("        then unfrozen at 1/100 of the head's learning rate")
    results["retarget_stress"] = _run("retarget_stress", STRESS, root, "partwise demo: stress from a kept encoder")
    _say("\n== 3/3  A generator trained through a frozen encoder inside the loss (scikit-learn digits)")
    results["digits_cycle"] = _run("digits_cycle", DIGITS, root, "partwise demo: frozen encoder in the loss")
    _say(f"\n== partwise demo done in {(time.perf_counter() - t0) / 60:.1f} min")
    for name, summary in results.items():
        _say(f"  {name:<16} dev: {format_metrics(summary['dev'])}")
    _say(f"  reports: {', '.join(str(root / n / 'report.md') for n in results)}")
    _say("  full recipes: recipes/g2p.yaml, recipes/retarget_stress.yaml, recipes/digits_cycle.yaml")
    return 0
