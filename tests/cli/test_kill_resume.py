"""A run killed (SIGKILL) at any moment and resumed with ``partwise resume`` ends exactly where the
uninterrupted run ends: bit-identical weights and optimizer state, the same best checkpoint, the same
``metrics.csv``, ``steps.csv``, ``phases.csv`` and ``report.md`` (wall-clock columns aside), and no
debris left in the run folder.

Where to kill comes from :mod:`partwise._run._failpoints`: an uninterrupted run records every fail point it
passes (between the writes of a step, an epoch end, a checkpoint, the report), and each killed run
dies at one of them, chosen by a seeded random draw: inside checkpoint writes, around the phase
transition, anywhere. The runs are forked from one process that imported partwise once
(``kill_runner.py``), so each costs its training time, not a Python start.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from partwise._run._failpoints import KILL_AT, TRACE
from partwise._run._runfolder import RunFolder
from partwise.cli._runlog import read_rows

from .cli_helpers import TINY

RECIPE = {
    **TINY,
    "model": {"name": "gru", "args": {"emb": 8, "hidden": 16, "attention": "dot", "dropout": 0.2}},
    "teacher_forcing": {"schedule": {"name": "inverse_sigmoid", "k": 3}, "per": "token", "mode": "exact"},
    "plan": [  # 3 steps per epoch: 6 in phase 1, 6 in phase 2, where the encoder joins with a warmup
        {"name": "decoder", "epochs": 2, "train": {"decoder": 5e-3}},
        {"name": "joint", "epochs": 2, "train": {"encoder": 3e-3, "decoder": 2e-3}, "schedule": {"warmup": 2}},
    ],
    # save_every divides the epoch: a step checkpoint and an epoch end fall on the same step
    "training": {"batch_size": 32, "best_metric": "wer", "save_every": 3, "threads": 1},
}
pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="the runner forks its runs (POSIX only)")
WALL_CLOCK = {"seconds"}  # metrics.csv columns that may differ between runs
RUNNER = Path(__file__).with_name("kill_runner.py")


class Runner:
    """The forking runner (``kill_runner.py``) as a subprocess: ``run(args, env)`` -> exit code."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self.proc = subprocess.Popen([sys.executable, str(RUNNER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)

    def run(self, *args: str, env: dict[str, str] | None = None) -> int:
        self.proc.stdin.write(json.dumps({"args": list(args), "env": env or {}, "log": str(self.log)}) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())["code"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


@dataclass
class Reference:
    recipe: Path
    run: Path
    trace: list[str]  # the fail points an uninterrupted `partwise train` passes, in order


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    r = Runner(tmp_path_factory.mktemp("kill_logs") / "runs.log")
    yield r
    r.close()


@pytest.fixture(scope="module")
def reference(runner, tmp_path_factory) -> Reference:
    folder = tmp_path_factory.mktemp("kill")
    recipe = folder / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({**RECIPE, "run_dir": str(folder / "reference")}), encoding="utf-8")
    trace = folder / "trace.txt"
    assert runner.run("train", str(recipe), env={TRACE: str(trace)}) == 0, runner.log.read_text()[-3000:]
    return Reference(recipe, folder / "reference", trace.read_text().split())


# -- comparing runs ---------------------------------------------------------------------------
def _tensors(ckpt: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(ckpt.glob("part-*.safetensors")):
        out.update({f"{f.name}:{k}": v for k, v in load_file(f).items()})
    return out


def _flat(obj, prefix=""):
    """(path, leaf) pairs of nested dicts and lists, wall-clock entries left out."""
    if isinstance(obj, dict):
        return [x for k, v in sorted(obj.items(), key=lambda kv: str(kv[0])) if k not in WALL_CLOCK
                for x in _flat(v, f"{prefix}/{k}")]
    if isinstance(obj, list | tuple):
        return [x for i, v in enumerate(obj) for x in _flat(v, f"{prefix}/{i}")]
    return [(prefix, obj)]


def _same_leaves(a, b) -> list[str]:
    fa, fb = _flat(a), _flat(b)
    if [p for p, _ in fa] != [p for p, _ in fb]:
        return ["different structure"]
    return [p for (p, x), (_, y) in zip(fa, fb, strict=True)
            if (not torch.equal(x, y) if isinstance(x, torch.Tensor) else x != y)]


def _checkpoint(run: Path, which: str) -> Path:
    root = run / "checkpoints"
    return root / (root / which).read_text().strip()


def _csv(path: Path) -> list[dict[str, str]] | None:
    if not path.is_file():
        return None
    return [{k: v for k, v in row.items() if k not in WALL_CLOCK} for row in read_rows(path)[1]]


def _report(run: Path) -> list[str]:
    """report.md without its wall-clock cells: the training minutes and the epochs' seconds column."""
    if not (run / "report.md").is_file():
        return ["(no report.md)"]
    out, in_epochs = [], False
    for line in (run / "report.md").read_text(encoding="utf-8").splitlines():
        if "training minutes" in line:
            continue
        if line.startswith("| epoch"):
            in_epochs = line.endswith("| seconds |")
        elif not line.startswith("|"):
            in_epochs = False
        out.append(line.rsplit("|", 2)[0] + "|" if in_epochs and line.startswith("|") else line)
    return out


def differences(ref: Path, run: Path) -> list[str]:
    """Everything in which ``run`` differs from the uninterrupted ``ref`` (empty: identical)."""
    out = []
    for which in ("latest", "best"):
        a, b = _checkpoint(ref, which), _checkpoint(run, which)
        if a.name != b.name:
            out.append(f"{which} names {b.name}, not {a.name}")
        ta, tb = _tensors(a), _tensors(b)
        if ta.keys() != tb.keys() or any(not torch.equal(ta[k], tb[k]) for k in ta):
            out.append(f"{which} weights differ")
        sa, sb = (torch.load(c / "state.pt", weights_only=True) for c in (a, b))
        out += [f"{which} state.pt{p} differs" for p in _same_leaves(sa, sb)]
    for name in ("metrics.csv", "steps.csv", "phases.csv"):
        if _csv(ref / name) != _csv(run / name):
            out.append(f"{name} differs")
    if _report(ref) != _report(run):
        out.append("report.md differs")
    listing = sorted(p.name for p in (run / "checkpoints").iterdir())
    if listing != sorted(p.name for p in (ref / "checkpoints").iterdir()):
        out.append(f"checkpoints/ holds {listing}")
    debris = [p.name for p in run.rglob(".*")]
    if debris:
        out.append(f"debris left: {debris}")
    return out


def kill_and_resume(runner: Runner, ref: Reference, kill_at: int) -> list[str]:
    """Train, killed at fail point ``kill_at``; resume (or train again when no checkpoint was written)
    until the run is complete; return how it differs from the reference."""
    run = Path(tempfile.mkdtemp(prefix=f"killed-at-{kill_at}-", dir=ref.run.parent)) / "run"
    code = runner.run("train", str(ref.recipe), f"run_dir={run}", env={KILL_AT: str(kill_at)})
    assert code == -9, f"not killed at point {kill_at} ({ref.trace[kill_at - 1]}): exit {code}"
    if RunFolder(run).has_checkpoint():  # complete, if perhaps not yet named by `latest`
        code = runner.run("resume", str(run))
    else:  # killed before the first checkpoint: nothing to resume, and `train` may start afresh
        code = runner.run("train", str(ref.recipe), f"run_dir={run}")
    assert code == 0, runner.log.read_text()[-3000:]
    return differences(ref.run, run)


def _indices(trace: list[str], name: str) -> list[int]:
    return [i + 1 for i, point in enumerate(trace) if point == name]


def kill_points(trace: list[str], n: int, seed: int) -> list[int]:
    """``n`` distinct seeded fail points: a third inside checkpoint writes, a quarter around the phase
    transition (from the last step of phase 1 to the second step of phase 2), the rest anywhere."""
    rng = random.Random(seed)
    transition = _indices(trace, "phase.entered")[1]
    steps = _indices(trace, "step.done")
    before = max(i for i in steps if i < transition)
    after = [i for i in steps if i > transition][1]
    saving = [i + 1 for i, p in enumerate(trace) if p.startswith("save.")]
    chosen: list[int] = []
    for pool, k in ((saving, n // 3), (range(before, after + 1), n // 4), (range(1, len(trace) + 1), n)):
        free = [i for i in pool if i not in chosen]
        chosen += rng.sample(free, min(len(free), k, n - len(chosen)))
    return sorted(chosen)


def test_the_reference_run_passes_every_kind_of_fail_point(reference):
    assert {"step.done", "step.logged", "epoch.evaluated", "epoch.saved", "epoch.logged", "phase.entered",
            "save.started", "save.part", "save.state", "save.meta", "save.renamed", "save.pointer",
            "save.pruned", "fit.done", "report.written"} <= set(reference.trace)
    assert not differences(reference.run, reference.run)


@pytest.mark.parametrize(("where", "occurrence"), [
    ("epoch.evaluated", 0),  # epoch 1's last step is done and logged, its evaluation is not
    ("phase.entered", 1),  # phase 2 entered, nothing trained in it yet
    ("epoch.saved", -1),  # the last checkpoint is written, its metrics row and the report are not
])
def test_a_run_killed_at_a_known_hole_resumes_exactly(runner, reference, where, occurrence):
    """`occurrence`: which passage of the fail point (0: the first, -1: the last)."""
    assert kill_and_resume(runner, reference, _indices(reference.trace, where)[occurrence]) == []


@pytest.mark.slow
def test_runs_killed_at_20_seeded_random_points_resume_exactly(runner, reference):
    points = kill_points(reference.trace, 20, seed=12)
    failed = {f"{p} ({reference.trace[p - 1]})": d for p in points if (d := kill_and_resume(runner, reference, p))}
    print(f"kill points passing: {len(points) - len(failed)} of {len(points)}")
    assert not failed


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_a_run_killed_again_and_again_while_resuming_ends_exactly(runner, reference, seed):
    """Killed in `train`, then in each of three resumes (at a seeded point of that process's own
    fail points), then resumed to the end."""
    rng = random.Random(seed)
    run = Path(tempfile.mkdtemp(prefix=f"killed-repeatedly-{seed}-", dir=reference.run.parent)) / "run"
    first = rng.randrange(len(reference.trace) // 4, len(reference.trace) // 2)
    assert runner.run("train", str(reference.recipe), f"run_dir={run}", env={KILL_AT: str(first)}) == -9
    for _ in range(3):
        code = runner.run("resume", str(run), env={KILL_AT: str(rng.randrange(1, 25))})
        assert code in (-9, 0), runner.log.read_text()[-3000:]
    assert runner.run("resume", str(run)) == 0, runner.log.read_text()[-3000:]
    assert differences(reference.run, run) == []


@pytest.fixture(scope="module")
def averaged_reference(runner, tmp_path_factory) -> Reference:
    """The reference recipe with ``training.average_last: 2``: the run ends by averaging its last two
    epoch-end checkpoints and deciding on dev whether the average becomes ``best``."""
    folder = tmp_path_factory.mktemp("kill_avg")
    recipe = folder / "recipe.yaml"
    raw = {**RECIPE, "run_dir": str(folder / "reference"), "training": {**RECIPE["training"], "average_last": 2}}
    recipe.write_text(yaml.safe_dump(raw), encoding="utf-8")
    trace = folder / "trace.txt"
    assert runner.run("train", str(recipe), env={TRACE: str(trace)}) == 0, runner.log.read_text()[-3000:]
    return Reference(recipe, folder / "reference", trace.read_text().split())


@pytest.mark.parametrize(("where", "occurrence"), [
    ("save.part", -1),  # inside the write of the average: a temporary folder, no average yet
    ("average.written", 0),  # the average is written, not yet scored or decided on
    ("average.decided", 0),  # decided (best may name it), the log line and the report not written
])
def test_a_run_killed_while_averaging_resumes_to_the_same_decision(runner, averaged_reference, where, occurrence):
    ref = averaged_reference
    assert {"average.written", "average.decided"} <= set(ref.trace)
    assert (ref.run / "checkpoints" / "averaged").is_dir()
    assert kill_and_resume(runner, ref, _indices(ref.trace, where)[occurrence]) == []
