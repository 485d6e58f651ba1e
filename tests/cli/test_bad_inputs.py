"""A corpus of bad inputs through every command: each gives exit code 2, one line naming the problem,
no traceback, and leaves every file as it was (no run directory created, no existing run changed).

One tiny real run is trained once per session (conftest.py); each case damages its own copy of it.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

from .cli_helpers import NEW_RUN, TINY, run_cli, tree_hash, write_recipe


# -- the corpus ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    name: str
    make: Callable[[Path, Path], list[str]]  # (run copy, case folder) -> argv, after damaging what it needs
    expect: tuple[str, ...]  # substrings the error line must contain (the problem and where)


CASES: list[Case] = []


def case(name: str, *expect: str) -> Callable[[Callable[[Path, Path], list[str]]], None]:
    def register(make: Callable[[Path, Path], list[str]]) -> None:
        CASES.append(Case(name, make, expect))

    return register


def edit_config(run: Path, change: Callable[[dict], None]) -> None:
    config = yaml.safe_load((run / "config.yaml").read_text())
    change(config)
    (run / "config.yaml").write_text(yaml.safe_dump(config))


def latest(run: Path) -> Path:
    return run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()


def a_part_file(run: Path) -> Path:
    return sorted(latest(run).glob("*.safetensors"))[0]


def train_with(folder: Path, *overrides: str, recipe: dict = TINY) -> list[str]:
    return ["train", str(write_recipe(folder, recipe)), *overrides]


# options checked by the parser
case("eval --beam -2", "--beam", "-2", ">= 1")(lambda run, d: ["eval", str(run), "--beam", "-2"])
case("eval --beam 0", "--beam", "'0'")(lambda run, d: ["eval", str(run), "--beam", "0"])
case("predict --beam 0", "--beam", "'0'")(lambda run, d: ["predict", str(run), "--beam", "0", "hello"])
case("predict --beam x", "--beam", "'x'")(lambda run, d: ["predict", str(run), "hello", "--beam", "x"])
case("train --max-steps -1", "--max-steps", "'-1'")(lambda run, d: train_with(d, "--max-steps", "-1"))
case("train --max-steps 0", "--max-steps", "'0'")(lambda run, d: train_with(d, "--max-steps", "0"))
case("resume --max-steps -1", "--max-steps", "'-1'")(lambda run, d: ["resume", str(run), "--max-steps", "-1"])
case("resume --max-steps 0", "--max-steps", "'0'")(lambda run, d: ["resume", str(run), "--max-steps", "0"])
case("eval --split train", "--split", "'train'")(lambda run, d: ["eval", str(run), "--split", "train"])
case("demo --minutes 0", "--minutes", "'0'")(lambda run, d: ["demo", "--minutes", "0", "--run-dir", str(d / "demo")])
case("unknown option", "--frobnicate")(lambda run, d: train_with(d, "--frobnicate"))
case("unknown command", "'fly'")(lambda run, d: ["fly", str(run)])


# recipes: checked before any folder is created
@case("recipe file missing", "recipe file not found", "nope.yaml")
def _(run: Path, d: Path) -> list[str]:
    return ["train", str(d / "nope.yaml")]


@case("recipe is a folder", "is a folder")
def _(run: Path, d: Path) -> list[str]:
    (d / "recipes").mkdir()
    return ["train", str(d / "recipes")]


@case("recipe malformed YAML", "bad.yaml", "malformed YAML at line")
def _(run: Path, d: Path) -> list[str]:
    (d / "bad.yaml").write_text("plan:\n  - name: a\n    train: {decoder: 1e-3\n")
    return ["train", str(d / "bad.yaml")]


@case("recipe with a !!python tag", "evil.yaml", "tag", "not allowed")
def _(run: Path, d: Path) -> list[str]:
    (d / "evil.yaml").write_text(f"run_dir: {d / NEW_RUN}\nseed: !!python/object/apply:os.system ['touch {d}/PWNED']\n")
    return ["train", str(d / "evil.yaml")]


@case("recipe is a list", "expected a mapping")
def _(run: Path, d: Path) -> list[str]:
    (d / "list.yaml").write_text("- a\n- b\n")
    return ["train", str(d / "list.yaml")]


@case("recipe not UTF-8", "bin.yaml", "not UTF-8")
def _(run: Path, d: Path) -> list[str]:
    (d / "bin.yaml").write_bytes(b"run_dir: \xff\xfe\x00x\n")
    return ["train", str(d / "bin.yaml")]


case("recipe unknown key", "modle", "unknown key")(lambda run, d: train_with(d, recipe={**TINY, "modle": {}}))
case("training.device banana", "training.device", "'banana'")(lambda run, d: train_with(d, "training.device=banana"))
case("training.device cuda unavailable", "training.device", "cuda")(
    lambda run, d: train_with(d, "training.device=" + ("cuda:99" if torch.cuda.is_available() else "cuda")))
case("training.precision fp16 on CPU", "training.precision", "fp16")(
    lambda run, d: train_with(d, "training.device=cpu", "training.precision=fp16"))
case("optimizer name typo in phase 2", "plan.1", "adamm")(
    lambda run, d: train_with(d, "plan.1.optimizer={name: adamm}"))
case("optimizer option the class lacks", "plan.1", "momentum")(
    lambda run, d: train_with(d, "plan.1.optimizer={momentum: 0.9}"))
case("optimizer option value torch refuses", "plan.0", "beta")(
    lambda run, d: train_with(d, "optimizer.betas=[2.0, 3.0]"))
case("best_metric typo", "training.best_metric", "'wre'")(lambda run, d: train_with(d, "training.best_metric=wre"))
case("early stopping metric typo", "training.early_stopping.metric", "'accuracy'")(
    lambda run, d: train_with(d, "training.early_stopping={metric: accuracy}"))
case("grad_clip names an unknown part", "training.grad_clip.encodr", "unknown part")(
    lambda run, d: train_with(d, "training.grad_clip={encodr: 1.0}"))
case("plan learning rate inf (one rule: the plan's)", "plan.0.train", "decoder", "finite number >= 0")(
    lambda run, d: train_with(d, "plan.0.train.decoder=.inf"))
case("plan names an unknown part", "plan.0.train.decodr", "unknown part")(
    lambda run, d: train_with(d, "plan.0.train={decodr: 0.001}"))
case("model.args unknown", "model.args", "bogus")(lambda run, d: train_with(d, "model.args.bogus=1"))
case("override not key=value", "'foo'", "key=value")(lambda run, d: train_with(d, "foo"))
case("override into a value", "training.batch_size", "not a section")(
    lambda run, d: train_with(d, "training.batch_size.x=1"))
case("boolean for a whole number", "training.batch_size", "true is a boolean")(
    lambda run, d: train_with(d, "training.batch_size=true"))
case("boolean for a subset size", "data.subset.size", "true is a boolean")(
    lambda run, d: train_with(d, "data.subset={size: true}"))
case("boolean for a learning rate", "plan.0.train.decoder", "true is a boolean")(
    lambda run, d: train_with(d, "plan.0.train={decoder: true}"))


def tsv_recipe(d: Path, train_text: bytes | None) -> dict:
    if train_text is not None:
        (d / "train.tsv").write_bytes(train_text)
    (d / "dev.tsv").write_text("cat\tK AE T\n")
    return {**TINY, "training": {**TINY["training"], "best_metric": "seq_error"},
            "data": {"name": "pairs", "train": str(d / "train.tsv"), "dev": str(d / "dev.tsv")}}


case("tsv data with bad lines", "train.tsv", "line 2")(
    lambda run, d: train_with(d, recipe=tsv_recipe(d, b"cat\tK AE T\ndog D AO G\n")))
case("tsv data file missing", "data.train", "train.tsv", "not found")(
    lambda run, d: train_with(d, recipe=tsv_recipe(d, None)))
case("tsv data not UTF-8", "train.tsv", "not UTF-8")(
    lambda run, d: train_with(d, recipe=tsv_recipe(d, b"cat\tK AE T\n\xff\xfe\tX\n")))


# run directories that train must not touch
@case("run_dir is a file", "run_dir", "is a file")
def _(run: Path, d: Path) -> list[str]:
    (d / NEW_RUN).write_text("not a folder")
    return train_with(d)


@case("--overwrite into a folder that is not a run", "--overwrite refused", "not a partwise run", "notes.txt")
def _(run: Path, d: Path) -> list[str]:
    (d / NEW_RUN).mkdir()
    (d / NEW_RUN / "notes.txt").write_text("mine")
    shutil.copy(run / "config.yaml", d / NEW_RUN / "config.yaml")
    return train_with(d, "--overwrite")


@case("--overwrite into a run holding the user's recipe", "--overwrite refused", "my_recipe.yaml")
def _(run: Path, d: Path) -> list[str]:
    recipe = write_recipe(run, TINY, name="my_recipe.yaml")  # the recipe kept inside the run folder
    return ["train", str(recipe), f"run_dir={run}", "--overwrite"]


@case("run_dir inside a file", "cannot be created", "is a file")
def _(run: Path, d: Path) -> list[str]:
    (d / "data.txt").write_text("x")
    return train_with(d, f"run_dir={d / 'data.txt' / 'run'}")


@case("--overwrite through a symbolic link", "--overwrite refused", "symbolic link")
def _(run: Path, d: Path) -> list[str]:
    (d / "link").symlink_to(run, target_is_directory=True)
    return train_with(d, f"run_dir={d / 'link'}", "--overwrite")


@case("existing run without --overwrite", "holds a partwise run", "--overwrite", "partwise resume")
def _(run: Path, d: Path) -> list[str]:
    return train_with(d, f"run_dir={run}")


@case("--overwrite with a bad data file", "train.tsv", "line 2")
def _(run: Path, d: Path) -> list[str]:
    return train_with(d, f"run_dir={run}", "--overwrite", recipe=tsv_recipe(d, b"cat\tK AE T\ndog\n"))


# damaged run files: resume, eval, predict
case("resume: run_dir is a file", "is a file")(lambda run, d: ["resume", str(run / "metrics.csv")])
case("eval: run_dir is a file", "is a file")(lambda run, d: ["eval", str(run / "config.yaml")])
case("predict: run_dir missing", "does not exist")(lambda run, d: ["predict", str(d / "nope"), "hello"])
case("eval: not a run directory", "not a run directory")(lambda run, d: ["eval", str(d)])


@case("config.yaml malformed", "config.yaml", "malformed YAML")
def _(run: Path, d: Path) -> list[str]:
    (run / "config.yaml").write_text("plan: [\n  {name: x\n")
    return ["eval", str(run)]


@case("config.yaml with a !!python tag", "config.yaml", "tag", "not allowed")
def _(run: Path, d: Path) -> list[str]:
    (run / "config.yaml").write_text(f"seed: !!python/object/apply:os.system ['touch {d}/PWNED']\n")
    return ["resume", str(run)]


@case("config.yaml invalid values", "config.yaml", "training.batch_size")
def _(run: Path, d: Path) -> list[str]:
    edit_config(run, lambda c: c["training"].update(batch_size=-1))
    return ["eval", str(run)]


@case("config.yaml unavailable device", "training.device", "'banana'")
def _(run: Path, d: Path) -> list[str]:
    edit_config(run, lambda c: c["training"].update(device="banana"))
    return ["resume", str(run)]


@case("meta.json garbage", "meta.json", "not valid JSON")
def _(run: Path, d: Path) -> list[str]:
    (latest(run) / "meta.json").write_text("{'step': ")
    return ["eval", str(run)]


@case("meta.json wrong shape", "meta.json", "'parts'")
def _(run: Path, d: Path) -> list[str]:
    (latest(run) / "meta.json").write_text("[1, 2, 3]")
    return ["resume", str(run)]


@case("artifacts.json garbage", "artifacts.json", "not valid JSON")
def _(run: Path, d: Path) -> list[str]:
    (run / "artifacts.json").write_bytes(b"\x00\x01garbage")
    return ["predict", str(run), "hello"]


@case("artifacts.json missing vocabularies", "artifacts.json", "does not hold")
def _(run: Path, d: Path) -> list[str]:
    (run / "artifacts.json").write_text("{}")
    return ["eval", str(run)]


@case("artifacts.json wrong vocabulary", "artifacts.json", "does not hold")
def _(run: Path, d: Path) -> list[str]:
    (run / "artifacts.json").write_text(json.dumps({"src": {"tokens": ["a"]}, "tgt": {"tokens": ["b"]}}))
    return ["resume", str(run)]


@case("safetensors truncated", ".safetensors", "damaged")
def _(run: Path, d: Path) -> list[str]:
    part = a_part_file(run)
    part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])
    return ["eval", str(run)]


@case("safetensors garbled", ".safetensors", "damaged")
def _(run: Path, d: Path) -> list[str]:
    part = a_part_file(run)
    part.write_bytes(os.urandom(part.stat().st_size))
    return ["resume", str(run)]


@case("safetensors missing", ".safetensors", "missing")
def _(run: Path, d: Path) -> list[str]:
    a_part_file(run).unlink()
    return ["predict", str(run), "hello"]


@case("state.pt garbage", "state.pt", "not a partwise training state")
def _(run: Path, d: Path) -> list[str]:
    (latest(run) / "state.pt").write_bytes(b"PK\x03\x04 not really a zip")
    return ["resume", str(run)]


class _Evil:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def __reduce__(self):
        return (os.system, (f"touch {self.folder}/PWNED",))


@case("state.pt with a malicious pickle", "state.pt", "not a partwise training state")
def _(run: Path, d: Path) -> list[str]:
    torch.save({"step": 3, "payload": _Evil(d)}, latest(run) / "state.pt")
    return ["resume", str(run)]


@case("state.pt that is not a training state", "state.pt", "missing")
def _(run: Path, d: Path) -> list[str]:
    torch.save({"weights": torch.zeros(3)}, latest(run) / "state.pt")
    return ["resume", str(run)]


@case("latest pointer names nothing", "latest", "not a complete checkpoint")
def _(run: Path, d: Path) -> list[str]:
    (run / "checkpoints" / "latest").write_text("step-99999999")
    return ["resume", str(run)]


@case("latest pointer garbled", "latest", "damaged")
def _(run: Path, d: Path) -> list[str]:
    (run / "checkpoints" / "latest").write_bytes(b"\xff\x00\xfe")
    return ["resume", str(run)]


@case("best pointer names nothing", "best", "not a complete checkpoint")
def _(run: Path, d: Path) -> list[str]:
    (run / "checkpoints" / "best").write_text("step-00000077\n")
    return ["eval", str(run)]


@case("best pointer leaves the folder", "best", "is not the name of a checkpoint folder beside it")
def _(run: Path, d: Path) -> list[str]:
    (run / "checkpoints" / "best").write_text("../../config.yaml")
    return ["predict", str(run), "hello"]


@case("latest pointer is a folder", "latest", "is not a file")
def _(run: Path, d: Path) -> list[str]:
    (run / "checkpoints" / "latest").unlink()
    (run / "checkpoints" / "latest").mkdir()
    return ["resume", str(run)]


@case("no checkpoint at all", "no complete checkpoint")
def _(run: Path, d: Path) -> list[str]:
    shutil.rmtree(run / "checkpoints")
    return ["resume", str(run)]


@case("resume: checkpoint from another model", "does not fit this model")
def _(run: Path, d: Path) -> list[str]:
    edit_config(run, lambda c: c["model"]["args"].update(hidden=24))
    return ["resume", str(run)]


@case("eval: checkpoint from another model", "does not fit this model")
def _(run: Path, d: Path) -> list[str]:
    edit_config(run, lambda c: c["model"]["args"].update(hidden=24))
    return ["eval", str(run)]


@case("resume: plan changed under the checkpoint", "phase", "plan the run was started with")
def _(run: Path, d: Path) -> list[str]:
    extra = [{"name": f"extra{i}", "steps": 1, "train": {"decoder": 1e-3}} for i in range(2)]
    edit_config(run, lambda c: c.update(plan=extra + c["plan"]))  # step 3, saved in phase 0, is now in phase 2
    return ["resume", str(run)]


# predict's words
case("predict: an empty word", "input 2 is empty")(lambda run, d: ["predict", str(run), "hello", ""])
case("predict: '-' and --file", "'-'", "--file", "conflict")(
    lambda run, d: ["predict", str(run), "-", "--file", str(d / "words.txt")])
case("predict: --file missing", "--file", "not found")(
    lambda run, d: ["predict", str(run), "--file", str(d / "nope.txt")])


@case("predict: --file not UTF-8", "--file", "not UTF-8")
def _(run: Path, d: Path) -> list[str]:
    (d / "words.bin").write_bytes(b"hello\n\xff\xfe\n")
    return ["predict", str(run), "--file", str(d / "words.bin")]


def test_the_corpus_is_large():
    assert len(CASES) >= 40 and len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("bad", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(bad: Case, base_run: Path, tmp_path: Path, capsys):
    run = tmp_path / "run"
    shutil.copytree(base_run, run)
    argv = bad.make(run, tmp_path)
    before = tree_hash(tmp_path)
    code, _, err = run_cli(capsys, *argv)
    assert code == 2, err
    assert "Traceback" not in err and err.count("\n") == 1 and err.startswith("partwise"), err
    assert "error:" in err
    for needle in bad.expect:
        assert needle in err, (needle, err)
    assert tree_hash(tmp_path) == before  # nothing created (no new run dir), removed or changed
