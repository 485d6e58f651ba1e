"""LoRA vs full fine-tuning vs the output layer alone, retargeting a kept inflection model to
lemmatisation at equal wall clock (the measurements behind docs/guides/adapters.md).

    python experiments/lora_retarget.py OUT [--minutes 1.5]

1. English inflection pairs from lemminflect (``recipes/prepare_inflection.py``): ``swim <VBD> -> swam``;
2. a base Transformer encoder-decoder trained on them (``OUT/runs/base``);
3. the reverse task, lemmatisation (``swam <VBD> -> swim``), from the base run's encoder and decoder
   (``init:``; the vocabularies are the same), each variant for the same wall-clock budget:
   the whole decoder, LoRA on the decoder (r=8), the decoder's output layer alone; the encoder is
   frozen (its outputs cached) in all three;
4. test sequence/token error, trainable parameters, optimizer state and checkpoint size of each.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
MODEL = {"name": "transformer", "args": {"d_model": 128, "heads": 4, "enc_layers": 2, "dec_layers": 2, "ff": 256,
                                         "dropout": 0.1}}
SIDES = {"source": {"tokenize": "regex", "pattern": "<[A-Z]+>|\\S"}, "target": {"tokenize": "char"}}
PARTS = {"encoder": ["encoder"], "decoder": ["decoder", "!decoder.out"], "head": ["decoder.out"]}
VARIANTS = {
    "whole decoder": {"plan": [{"name": "decoder", "epochs": 20, "train": {"decoder": 1e-3, "head": 1e-3}}]},
    "decoder LoRA (r=8)": {"adapters": {"parts": ["decoder"], "r": 8, "alpha": 16},
                           "plan": [{"name": "lora", "epochs": 20, "train": {"decoder.lora": 2e-3}}]},
    "output layer only": {"plan": [{"name": "head", "epochs": 20, "train": {"head": 1e-3}}]},
}


def sh(*cmd: str, cwd: Path) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout


def recipe(run_dir: str, data: str, **extra) -> dict:
    return {"run_dir": run_dir, "seed": 0, "model": MODEL, "parts": PARTS,
            "data": {"name": "pairs", "train": f"{data}/train.tsv", "dev": f"{data}/dev.tsv",
                     "test": f"{data}/test.tsv", **SIDES},
            "training": {"batch_size": 128, "threads": 1, "cache": "auto", "guard": True,
                         "best_metric": "seq_error"}, **extra}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--minutes", type=float, default=1.5)
    ap.add_argument("--base-epochs", type=int, default=4)
    args = ap.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    exe = str(Path(sys.executable).parent / "partwise")
    if not (out / "data/inflection/test.tsv").exists():
        sh(sys.executable, str(ROOT / "recipes/prepare_inflection.py"), "data/inflection", cwd=out)
    lemma = out / "data/lemma"
    lemma.mkdir(parents=True, exist_ok=True)
    for split in ("train", "dev", "test"):
        rows = (out / f"data/inflection/{split}.tsv").read_text(encoding="utf-8").splitlines()
        flipped = []
        for row in rows:
            source, form = row.split("\t")
            word, tag = source.split(" ")
            flipped.append(f"{form} {tag}\t{word}")
        (lemma / f"{split}.tsv").write_text("\n".join(flipped) + "\n", encoding="utf-8")
    base = recipe("runs/base", "data/inflection",
                  plan=[{"name": "all", "epochs": args.base_epochs,
                         "train": {"encoder": 1e-3, "decoder": 1e-3, "head": 1e-3},
                         "schedule": {"warmup": 200}}])
    (out / "base.yaml").write_text(yaml.safe_dump(base), encoding="utf-8")
    if not (out / "runs/base/report.md").exists():
        t0 = time.time()
        sh(exe, "train", "base.yaml", "--overwrite", cwd=out)
        print(f"base run: {time.time() - t0:.0f} s", flush=True)
    print(sh(exe, "eval", "runs/base", "--split", "test", cwd=out).strip(), flush=True)
    rows = []
    for i, (name, variant) in enumerate(VARIANTS.items()):
        init = {p: {"from": "runs/base", "checkpoint": "best"} for p in ("encoder", "decoder", "head")}
        spec = recipe(f"runs/v{i}", "data/lemma", init=init, **variant)
        spec["training"]["max_minutes"] = args.minutes
        (out / f"v{i}.yaml").write_text(yaml.safe_dump(spec), encoding="utf-8")
        inspect = sh(exe, "inspect", f"v{i}.yaml", cwd=out)
        trainable = re.search(r"; trainable ([\d,]+) params", inspect).group(1)
        t0 = time.time()
        sh(exe, "train", f"v{i}.yaml", "--overwrite", cwd=out)
        wall = time.time() - t0
        test = sh(exe, "eval", f"runs/v{i}", "--split", "test", cwd=out).strip()
        ckpt = sorted((out / f"runs/v{i}/checkpoints").glob("step-*"))[-1]
        sizes = {p.name: p.stat().st_size for p in ckpt.glob("*.safetensors")}
        state = (ckpt / "state.pt").stat().st_size
        trained_files = {k: v for k, v in sizes.items() if any(
            f"part-{p}.safetensors" == k for p in variant["plan"][0]["train"])}
        rows.append({"variant": name, "trainable": trainable, "test": test, "wall_s": round(wall),
                     "trained_part_bytes": sum(trained_files.values()), "checkpoint_bytes": sum(sizes.values()) + state,
                     "state_pt_bytes": state})
        print(json.dumps(rows[-1]), flush=True)
    (out / "results.json").write_text(json.dumps(rows, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
