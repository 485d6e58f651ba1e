"""Learning curves for retargeting (issue: when does keeping an encoder pay?).

Trains the stress/syllable task (``recipes/retarget_stress.yaml``) on seeded random subsets of the
training words (``data.subset``; one seed, so the subsets are nested) with three encoders:

* ``g2p_en``  — g2p-en's pretrained G2P encoder, kept: frozen (from the cache), then unfrozen at 1e-5;
* ``run``     — the encoder of a partwise G2P run (``--g2p-run``), kept the same way;
* ``scratch`` — g2p-en's shape, fresh weights, trained from the start at 3e-3 with the head.

Two settings per size: ``budget`` — every system gets the same wall-clock (``training.max_minutes``),
constant learning rates after warmup, and the best dev epoch is scored; ``converge`` — early stopping
on dev ``both_acc`` (patience 10 evaluations up to 2,000 words, 6 at 8,000, 4 above: epochs are short
on small subsets), capped at ``--cap`` minutes; the kept encoders' frozen phase is then 4 epochs, so
that a plateau of the frozen head cannot stop the run before the encoder is unfrozen. ``recipe`` (32,000
and all words) — the shipped recipe's own plan with its cosine decay, for the kept encoders, and for the
scratch encoder the same plan with ``plan.0.train={decoder: 3e-3, encoder: 3e-3}``, each stopped at
the budget: the budget setting's constant rates favour the kept encoders at full size. Test accuracy
of each run's best dev checkpoint goes to ``results.csv``; the plot to ``curve.png``. Runs already in
``results.csv`` are skipped, so the script can be stopped and rerun.

    python experiments/retarget_curve.py --g2p-run runs/g2p_pilot --out experiments/retarget_curve
"""

from __future__ import annotations

import argparse
import csv
import math
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "retarget_stress.yaml"
ALL_WORDS = 107_146
PARTWISE = str(Path(sys.executable).with_name("partwise"))  # the CLI of the environment running this script
FIELDS = ["setting", "system", "size", "test_both_acc", "test_stress_acc", "test_syllables_acc",
          "majority_stress_acc", "majority_syllables_acc", "train_minutes", "epochs", "best_epoch", "stopped"]


def plan(system: str, size: int, setting: str) -> str:
    """The plan, as a YAML override. Kept encoders: frozen epochs (budget: at least 4; more on small
    subsets, so the head sees ~4 passes' worth of 107k words, at most 40; converge: 4), then unfrozen
    at 1/100 until stopped."""
    long = 10_000  # epochs: the run ends by max_minutes or early stopping, never by the plan
    if setting == "recipe":
        return "" if system != "scratch" else "plan.0.train={decoder: 3.0e-3, encoder: 3.0e-3}"
    if system == "scratch":
        return (f"[{{name: joint, epochs: {long}, train: {{decoder: 3.0e-3, encoder: 3.0e-3}}, "
                "schedule: {warmup: 100}}]")
    frozen = min(40, max(4, math.ceil(4 * ALL_WORDS / size))) if setting == "budget" else 4
    return (f"[{{name: frozen encoder, epochs: {frozen}, train: {{decoder: 3.0e-3}}, schedule: {{warmup: 100}}}}, "
            f"{{name: unfrozen, epochs: {long}, train: {{decoder: 1.0e-3, encoder: 1.0e-5}}, "
            "schedule: {warmup: 100}}]")


def encoder(system: str, g2p_run: Path) -> str:
    return f"run:{g2p_run}" if system == "run" else system


def train_and_score(run: Path, overrides: list[str]) -> dict[str, object]:
    shutil.rmtree(run, ignore_errors=True)
    cmd = [PARTWISE, "train", str(RECIPE), f"run_dir={run}", *overrides]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    minutes = (time.perf_counter() - t0) / 60
    out = subprocess.run([PARTWISE, "eval", str(run), "--split", "test"], check=True,
                         capture_output=True, text=True).stdout
    scores = {k: float(v) / 100 for k, v in re.findall(r"(\w+_acc) ([0-9.]+)%", out)}
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    best = max(rows, key=lambda r: float(r["dev_both_acc"]))
    ended = re.search(r"training ended at step [0-9,]+: (.*)", (run / "log.txt").read_text())
    return {**{f"test_{k}" if not k.startswith("majority") else k: v for k, v in scores.items()},
            "train_minutes": round(minutes, 2), "epochs": len(rows), "best_epoch": best["epoch"],
            "stopped": ended.group(1).split(":")[0] if ended else "?"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--g2p-run", type=Path, required=True, help="a partwise G2P run (GRU) whose encoder is kept")
    ap.add_argument("--out", type=Path, default=ROOT / "experiments" / "retarget_curve")
    ap.add_argument("--sizes", nargs="+", default=["500", "2000", "8000", "32000", "all"])
    ap.add_argument("--systems", nargs="+", default=["g2p_en", "run", "scratch"])
    ap.add_argument("--settings", nargs="+", default=["budget", "converge"])
    ap.add_argument("--budget", type=float, default=2.7, help="minutes per run in the budget setting")
    ap.add_argument("--cap", type=float, default=8.0, help="minutes cap in the converge setting")
    ap.add_argument("--report", action="store_true", help="only redraw curve.png and table.md from results.csv")
    ap.add_argument("--runs", type=Path, default=Path("/tmp/retarget_curve_runs"), help="where the runs go")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = args.out / "results.csv"
    if args.report:
        plot(results, args.out / "curve.png")
        table(results, args.out / "table.md")
        return
    done = ({(r["setting"], r["system"], r["size"]) for r in csv.DictReader(results.open())}
            if results.exists() else set())
    for setting in args.settings:
        for size_text in args.sizes:
            for system in args.systems:  # systems interleaved per size: load on the machine hits all alike
                if (setting, system, size_text) in done:
                    continue
                size = ALL_WORDS if size_text == "all" else int(size_text)
                if setting == "recipe" and size_text not in ("32000", "all"):
                    continue
                the_plan = plan(system, size, setting)
                overrides = [f"task.args.encoder={encoder(system, args.g2p_run.resolve())}", "training.threads=1"]
                overrides += [the_plan] if setting == "recipe" and the_plan else []
                overrides += [f"plan={the_plan}"] if setting != "recipe" else []
                if size_text != "all":
                    overrides.append(f"data.subset={{size: {size}, seed: 0}}")
                if setting in ("budget", "recipe"):
                    overrides.append(f"training.max_minutes={args.budget}")
                else:
                    patience = 10 if size <= 2000 else 6 if size <= 8000 else 4
                    overrides += [f"training.max_minutes={args.cap}",
                                  f"training.early_stopping={{metric: both_acc, mode: max, patience: {patience}}}"]
                row = {"setting": setting, "system": system, "size": size_text,
                       **train_and_score(args.runs / f"{setting}-{system}-{size_text}", overrides)}
                print(row, flush=True)
                new = not results.exists()
                with results.open("a", newline="") as f:
                    writer = csv.DictWriter(f, FIELDS, extrasaction="ignore")
                    if new:
                        writer.writeheader()
                    writer.writerow(row)
    plot(results, args.out / "curve.png")
    table(results, args.out / "table.md")


def table(results: Path, out: Path) -> None:
    """``table.md``: size x system -> test accuracy (both labels) and training minutes, per setting."""
    rows = list(csv.DictReader(results.open()))
    lines = []
    for setting in ("budget", "converge", "recipe"):
        got = {(r["system"], r["size"]): r for r in rows if r["setting"] == setting}
        if not got:
            continue
        sizes = [s for s in ("500", "2000", "8000", "32000", "all") if any(k[1] == s for k in got)]
        lines += [f"**{setting}** — test accuracy, stress and syllable count both right (training minutes; "
                  "best dev epoch / epochs run)", "",
                  "| system | " + " | ".join(f"{int(s):,} words" if s != "all" else "all 107,146"
                                           for s in sizes) + " |",
                  "|---" * (len(sizes) + 1) + "|"]
        for system in ("g2p_en", "run", "scratch"):
            cells = []
            for s in sizes:
                r = got.get((system, s))
                cells.append(f"{float(r['test_both_acc']):.1%} ({float(r['train_minutes']):.1f} min; "
                             f"{r['best_epoch']}/{r['epochs']})" if r else "")
            lines.append(f"| {system} | " + " | ".join(cells) + " |")
        majority = {s: next(r for r in rows if r["size"] == s) for s in sizes}
        lines.append("| majority class (stress / syllables) | " + " | ".join(
            f"{float(m['majority_stress_acc']):.1%} / {float(m['majority_syllables_acc']):.1%}"
            for m in majority.values()) + " |")
        lines.append("")
    out.write_text("\n".join(lines), encoding="utf-8")


def plot(results: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(results.open()))
    settings = [s for s in ("budget", "converge") if any(r["setting"] == s for r in rows)]
    fig, axes = plt.subplots(1, len(settings), figsize=(6 * len(settings), 4.2), squeeze=False, sharey=True)
    colors = {"g2p_en": "tab:blue", "run": "tab:orange", "scratch": "tab:green"}
    names = {"g2p_en": "kept: g2p-en encoder", "run": "kept: partwise G2P run's encoder",
             "scratch": "scratch encoder"}
    for ax, setting in zip(axes[0], settings, strict=True):
        for system, label in names.items():
            pts = sorted((ALL_WORDS if r["size"] == "all" else int(r["size"]), float(r["test_both_acc"]) * 100)
                         for r in rows if r["setting"] == setting and r["system"] == system)
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=label, color=colors[system])
            recipe = sorted((ALL_WORDS if r["size"] == "all" else int(r["size"]), float(r["test_both_acc"]) * 100)
                            for r in rows if r["setting"] == "recipe" and r["system"] == system)
            if recipe and setting == "budget":
                ax.plot(*zip(*recipe, strict=True), marker="s", linestyle="--", fillstyle="none",
                        color=colors[system], label=f"{label}, the recipe's cosine plan")
        ax.set_xscale("log")
        ax.set_xlabel("labelled training words")
        ax.set_title("equal wall-clock budget (2.7 min), constant rates" if setting == "budget"
                     else "each to convergence on dev (early stopping)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy, stress and syllable count both right (%)")
    axes[0][0].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)


if __name__ == "__main__":
    main()
