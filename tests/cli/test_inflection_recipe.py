"""The shipped inflection recipe, end to end: pairs prepared from lemminflect's lexicon, split by lemma,
trained, evaluated and predicted through the pair-file contract (a short run)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from partwise.cli import main

from .cli_helpers import run_cli

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(importlib.util.find_spec("lemminflect") is None, reason="needs partwise[data]")


@pytest.fixture(scope="module")
def prepare():
    sys.path.insert(0, str(ROOT / "recipes"))
    try:
        import prepare_inflection
    finally:
        sys.path.remove(str(ROOT / "recipes"))
    return prepare_inflection


def test_pairs_are_split_by_lemma_and_baselines_are_what_the_header_says(prepare, tmp_path, capsys):
    assert prepare.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "test baselines (sequence error rate): copy 87.9%, majority rule 37.5%" in out
    lemmas = {}
    for split in ("train", "dev", "test"):
        lines = (tmp_path / f"{split}.tsv").read_text(encoding="utf-8").splitlines()
        lemmas[split] = {line.split(" <")[0] for line in lines}
    assert (len(lemmas["train"]) == 17_365 and not lemmas["test"] & lemmas["train"]
            and not lemmas["dev"] & lemmas["train"])
    assert "swim <VBD>\tswam" in (tmp_path / "train.tsv").read_text() + (tmp_path / "dev.tsv").read_text() + (
        tmp_path / "test.tsv").read_text()
    assert prepare.rule("swim", "swam") == (2, "am") and prepare.apply("swim", (2, "am")) == "swam"


def test_the_shipped_recipe_trains_evaluates_and_predicts(prepare, tmp_path, capsys):
    prepare.main([str(tmp_path / "data")])
    run = tmp_path / "run"
    paths = [f"data.{s}={tmp_path / 'data' / f'{s}.tsv'}" for s in ("train", "dev", "test")]
    code = main(["train", str(ROOT / "recipes" / "inflection.yaml"), *paths, "data.limit=300",
                 "training.batch_size=64", f"run_dir={run}", "--max-steps", "4"])
    assert code == 0
    code, out, err = run_cli(capsys, "eval", str(run), "--split", "test")
    assert code == 0 and "seq_error" in out and "300 inputs" in out, err
    code, out, err = run_cli(capsys, "predict", str(run), "swim <VBD>")
    assert code == 0 and out.startswith("swim <VBD>\t") and " " not in out.split("\t")[1].strip(), err
