"""``partwise demo``: partwise's point on real data in a few minutes on a laptop CPU.

1. G2P on CMUdict: encoder and decoder with their own optimizers and learning rates, then the encoder
   frozen while the decoder learns with inverse-sigmoid scheduled sampling (two-pass).
2. Retargeting where keeping pays: with few labelled words (a seeded random 2,000 of the 107k) and
   the same short wall-clock budget, g2p-en's pretrained encoder kept (frozen from cached outputs, a
   new stress/syllable head, then unfrozen at 1/100) against the same model with a scratch encoder
   trained from the start; both figures side by side. (With all 107k words and a few minutes the
   scratch encoder catches up: experiments/retarget_curve.)
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
RETARGET_WORDS, RETARGET_MINUTES = 2000, 0.75  # few labels, a short budget: where the kept encoder wins
STRESS: dict[str, Any] = {
    "task": {"name": "stress", "args": {"encoder": "g2p_en"}},
    "data": {"name": "cmudict", "subset": {"size": RETARGET_WORDS, "seed": 0}},
    "model": {"name": "gru", "args": {"hidden": 256, "dropout": 0.1}},
    "plan": [
        {"name": "frozen encoder", "epochs": 40, "train": {"decoder": 3e-3}, "schedule": {"warmup": 100}},
        {"name": "unfrozen", "epochs": 1000, "train": {"decoder": 1e-3, "encoder": 1e-5}, "schedule": {"warmup": 100}},
    ],
    "training": {"batch_size": 128, "cache": "on", "guard": True, "best_metric": "both_acc", "best_mode": "max",
                 "threads": 1, "max_minutes": RETARGET_MINUTES},
}
STRESS_SCRATCH = {  # the same model and data, a fresh encoder trained from the start
    **STRESS,
    "task": {"name": "stress", "args": {"encoder": "scratch"}},
    "plan": [{"name": "joint", "epochs": 1000, "train": {"decoder": 3e-3, "encoder": 3e-3},
              "schedule": {"warmup": 100}}],
    "training": {**STRESS["training"], "cache": "auto", "guard": False},
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
DEMO_RECIPES = {"g2p": G2P, "retarget_stress": STRESS, "retarget_scratch": STRESS_SCRATCH, "digits_cycle": DIGITS}


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
    _say(f"\n== 2/3  Retarget with few labels ({RETARGET_WORDS:,} words, {RETARGET_MINUTES} min each): g2p-en's "
         "pretrained encoder kept")
    _say("        (frozen from cached outputs, a new stress/syllable head, then unfrozen at 1/100), against the")
    _say("        same model with a scratch encoder trained from the start")
    results["retarget_stress"] = _run("retarget_stress", STRESS, root, "partwise demo: stress from a kept encoder")
    results["retarget_scratch"] = _run("retarget_scratch", STRESS_SCRATCH, root,
                                       "partwise demo: stress from a scratch encoder")
    kept, scratch = (results[k]["dev"]["both_acc"] for k in ("retarget_stress", "retarget_scratch"))
    _say(f"\nstress and syllable count both right (dev, best epoch): kept g2p-en encoder {kept:.1%}, "
         f"scratch encoder {scratch:.1%}, at equal wall-clock")
    _say("\n== 3/3  A generator trained through a frozen encoder inside the loss (scikit-learn digits)")
    results["digits_cycle"] = _run("digits_cycle", DIGITS, root, "partwise demo: frozen encoder in the loss")
    _say(f"\n== partwise demo done in {(time.perf_counter() - t0) / 60:.1f} min")
    for name, summary in results.items():
        _say(f"  {name:<16} dev: {format_metrics(summary['dev'])}")
    _say(f"  reports: {', '.join(str(root / n / 'report.md') for n in results)}")
    _say("  full recipes: partwise train g2p, retarget_stress or digits_cycle (partwise recipes lists them)")
    return 0
