"""Any seq2seq task from the command line: pair files, char-level targets, predict's output, the
report's per-phase facts, and init: from another run (same and different source vocabulary)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import yaml

import partwise as pw
from partwise.cli import main

from .cli_helpers import run_cli

LETTERS = "abcdefgh"


def _words(n: int, seed: int, letters: str = LETTERS) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(letters) for _ in range(rng.randint(2, 5))) for _ in range(n)]


def write_pairs(folder: Path, letters: str = LETTERS, ext: str = "tsv") -> dict[str, str]:
    """Reverse-and-double: 'abc' -> 'ccbbaa' (character targets twice the source length)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, n, seed in (("train", 96, 0), ("dev", 24, 1), ("test", 24, 2)):
        path = folder / f"{split}.{ext}"
        lines = [f"{w}\t{''.join(c + c for c in reversed(w))}" for w in _words(n, seed, letters)]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        paths[split] = str(path)
    return paths


def pairs_recipe(folder: Path, paths: dict[str, str], **extra) -> Path:
    recipe = {
        "run_dir": str(folder / "run"),
        "data": {"name": "pairs", **paths, "source": {"tokenize": "char"}, "target": {"tokenize": "char"}},
        "model": {"name": "gru", "args": {"emb": 8, "hidden": 16, "attention": "dot", "dropout": 0.0}},
        "plan": [{"name": "joint", "epochs": 1, "train": {"encoder": 1e-2, "decoder": 1e-2}},
                 {"name": "decoder", "epochs": 1, "train": {"decoder": 1e-2}}],
        "training": {"batch_size": 32, "guard": True},
        **extra,
    }
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def pairs_run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pairs")
    recipe = pairs_recipe(folder, write_pairs(folder / "data"))
    assert main(["train", str(recipe)]) == 0
    return folder / "run"


def test_a_pairs_run_reports_task_neutral_metrics_and_what_it_guaranteed(pairs_run):
    config = yaml.safe_load((pairs_run / "config.yaml").read_text())
    assert set(config["data"]) == {"name", "train", "dev", "test", "format", "encoding", "fields", "source",
                                   "target", "limit", "subset"}  # only the keys of pair files, no G2P keys
    assert config["training"]["best_metric"] == "seq_error" and "init" not in config
    header = (pairs_run / "metrics.csv").read_text().splitlines()[0]
    assert "dev_seq_error" in header and "dev_token_error" in header and "dev_wer" not in header
    report = (pairs_run / "report.md").read_text()
    best = (pairs_run / "checkpoints" / "best").read_text().strip()
    step = json.loads((pairs_run / "checkpoints" / best / "meta.json").read_text())["step"]
    assert f"| dev figures from | best checkpoint, step {step} of 6 |" in report  # the best's own step
    assert "phase 1 'joint' · guard | armed (nothing frozen), passed" in report
    assert "phase 2 'decoder' · guard | armed, passed" in report
    assert "phase 2 'decoder' · cache | not used: the encoder" not in report  # frozen encoder: cached
    assert "phase 2 'decoder' · cache | used" in report
    assert "phase 1 'joint' · cache | not used: the encoder trains in this phase" in report
    log = (pairs_run / "log.txt").read_text()
    assert "guard passed" in log and "dev: " in log


def test_eval_and_predict_on_character_targets(pairs_run, capsys):
    code, out, err = run_cli(capsys, "eval", str(pairs_run), "--split", "test")
    assert code == 0, err
    assert "seq_error" in out and "token_error" in out and "best checkpoint, step" in out and "24 inputs" in out
    code, out, err = run_cli(capsys, "predict", str(pairs_run), "abc", "--join", "+", "ab!")
    assert code == 0, err
    lines = out.splitlines()
    assert [line.split("\t")[0] for line in lines] == ["abc", "ab!"] and " " not in lines[0].split("\t")[1]
    assert "+" in lines[0].split("\t")[1] or lines[0].split("\t")[1] == "<empty>"
    assert "input 'ab!': '!' not in the source vocabulary" in err
    code, out, err = run_cli(capsys, "predict", str(pairs_run), "abcd")
    assert code == 0 and "+" not in out and " " not in out.split("\t")[1].strip()  # characters join with ""


def test_outputs_at_the_limit_are_warned_about(pairs_run, capsys):
    code, out, err = run_cli(capsys, "eval", str(pairs_run), "--max-len", "2")
    assert code == 0, err
    assert "warning: 24 of 24 test outputs stopped at 2 tokens" in err and "--max-len" in err
    code, out, err = run_cli(capsys, "predict", "--max-len", "1", str(pairs_run), "abcd")
    assert code == 0 and "stopped at the length limit" in err


def test_an_empty_output_is_printed_visibly(pairs_run, capsys, monkeypatch):
    from partwise.tasks import _seq2seq as _seq2seq_kind

    monkeypatch.setattr(_seq2seq_kind.Seq2SeqTask, "decode", lambda self, model, src, mask: [[] for _ in src])
    code, out, _ = run_cli(capsys, "predict", str(pairs_run), "abc")
    assert code == 0 and out == "abc\t<empty>\n"


def test_init_from_a_run_with_the_same_and_a_different_source_vocabulary(pairs_run, tmp_path, capsys):
    # the same data: the encoder loads as it is
    same = tmp_path / "same"
    recipe = pairs_recipe(same, write_pairs(same / "data"),
                          init={"encoder": {"from": str(pairs_run), "checkpoint": "best"}},
                          plan=[{"name": "decoder", "epochs": 1, "train": {"decoder": 1e-2}}])
    code, out, err = run_cli(capsys, "train", str(recipe), "--max-steps", "1")
    assert code == 0, err
    assert "init encoder <- part 'encoder' of" in out and "(best checkpoint, step" in out and "vocabulary equal" in out
    import torch
    from safetensors.torch import load_file

    def encoder_of(run: Path, which: str) -> dict[str, torch.Tensor]:
        name = (run / "checkpoints" / which).read_text().strip()
        return load_file(run / "checkpoints" / name / "part-encoder.safetensors")

    source, copied = encoder_of(pairs_run, "best"), encoder_of(same / "run", "latest")
    assert all(torch.equal(source[k], copied[k]) for k in source)  # frozen in the only phase: bit-identical

    # new letters in the sources: embedding rows remapped by token, reported in the log
    other = tmp_path / "other"
    recipe = pairs_recipe(other, write_pairs(other / "data", letters="abcdefxyz"),
                          init={"encoder": {"from": str(pairs_run), "checkpoint": "latest"}})
    code, out, err = run_cli(capsys, "train", str(recipe), "--max-steps", "1")
    assert code == 0, err
    log = (other / "run" / "log.txt").read_text()
    assert "vocabulary differs, rows remapped by token" in log and "3 new (mean row: 'x', 'y', 'z')" in log
    assert "2 gone" in log  # g and h

    # vocab: same refuses, before anything is written
    refused = tmp_path / "refused"
    recipe = pairs_recipe(refused, write_pairs(refused / "data", letters="abcdefxyz"),
                          init={"encoder": {"from": str(pairs_run), "checkpoint": "best", "vocab": "same"}})
    code, out, err = run_cli(capsys, "train", str(recipe))
    assert code == 2 and "init.encoder: refused: the source vocabulary of encoder" in err and "vocab: remap" in err
    assert not (refused / "run").exists()


def test_init_problems_are_reported_at_once_before_any_work(pairs_run, tmp_path, capsys):
    recipe = pairs_recipe(tmp_path, write_pairs(tmp_path / "data"), init={
        "encoder": {"from": str(pairs_run)},                                  # no checkpoint chosen
        "decoder": {"from": str(tmp_path / "nowhere"), "checkpoint": "best"},
        "encodr": {"from": str(pairs_run), "checkpoint": "latest"},
        "rest": {"from": str(pairs_run), "checkpoint": "best", "part": "head", "bogus": 1},
    })
    code, _, err = run_cli(capsys, "train", str(recipe))
    assert code == 2 and "init.rest.bogus: unknown key" in err and "'Starting from another run'" in err
    raw = yaml.safe_load(recipe.read_text())
    del raw["init"]["rest"]["bogus"]
    recipe.write_text(yaml.safe_dump(raw))
    code, _, err = run_cli(capsys, "train", str(recipe))
    assert code == 2 and "6 problem(s)" in err, err
    assert "init.encoder.checkpoint: required when from is a run directory; choose best" in err
    assert "init.decoder.from:" in err and "not found" in err
    assert "has no part 'head'" in err and "init.encodr: unknown part" in err
    assert not (tmp_path / "run").exists()


def test_a_custom_factory_imports_from_the_recipe_folder_and_its_args_are_checked(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path / "unused"))  # restored afterwards, with what the CLI adds
    (tmp_path / "my_models.py").write_text(
        "from partwise.seq2seq import gru_seq2seq\n"
        "CALLS = []\n"
        "def small(src_vocab: int, tgt_vocab: int, hidden: int = 16):\n"
        "    CALLS.append((src_vocab, tgt_vocab))\n"
        "    return gru_seq2seq(src_vocab, tgt_vocab, emb=8, hidden=hidden, attention='dot', dropout=0.0)\n")
    paths = write_pairs(tmp_path / "data")
    recipe = pairs_recipe(tmp_path, paths, model={"name": "my_models:small", "args": {"hidden": "x", "layers": 2}})
    code, _, err = run_cli(capsys, "train", str(recipe))
    assert code == 2 and "model.args.hidden: Input should be a valid integer" in err
    assert "model.args.layers: unknown key; model 'my_models:small': keys are hidden" in err
    recipe = pairs_recipe(tmp_path, paths, model={"name": "my_models:small", "args": {"hidden": 12}})
    code, _, err = run_cli(capsys, "train", str(recipe), "--max-steps", "1")
    assert code == 0, err
    import my_models

    assert my_models.CALLS and all(sizes == my_models.CALLS[0] for sizes in my_models.CALLS)  # never stand-ins
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["model"]["path"] == str(tmp_path.resolve())
    code, out, err = run_cli(capsys, "predict", str(tmp_path / "run"), "abc")
    assert code == 0, err


def test_every_args_schema_rejects_an_unknown_key(tmp_path, capsys):
    plan = [{"name": "p", "epochs": 1, "train": {"encoder": 1e-3}}]
    cases = [
        ({"task": {"name": "seq2seq", "args": {"encoder": "run:runs/x", "bogus_key": 3}}}, "task.args.bogus_key"),
        ({"model": {"name": "gru", "args": {"hiden": 8}}}, "model.args.hiden"),
        ({"model": {"name": "transformer", "args": {"layers": 2}}}, "model.args.layers"),
        ({"model": {"name": "hf", "args": {"pth": "x"}}}, "model.args.pth"),
        ({"task": {"name": "stress", "args": {"encoders": "x"}}, "model": {"name": "gru"}}, "task.args.encoders"),
        ({"task": {"name": "stress"}, "model": {"name": "gru", "args": {"emb": 3}}}, "model.args.emb"),
        ({"task": {"name": "digits_cycle", "args": {"phases": []}}, "data": {"name": "digits"},
          "model": {"name": "mlp"}}, "task.args.phases"),
        ({"task": {"name": "digits_cycle"}, "data": {"name": "digits"}, "model": {"name": "mlp", "args": {"x": 1}}},
         "model.args.x"),
        ({"data": {"name": "pairs", "train": "a.tsv", "dev": "b.tsv", "tokenise": "char"}}, "data.tokenise"),
        ({"data": {"name": "pairs", "train": "a.tsv", "dev": "b.tsv", "source": {"tokenize": "regex"}}},
         "data.source.pattern: required"),
        ({"data": {"name": "cmudict", "train": "a.tsv"}}, "data.train"),
        ({"data": {"name": "pairs", "train": "a.tsv", "dev": "b.tsv", "target": "chars"}},
         "data.target: unknown tokenize 'chars'; choose one of char, space, regex, hf"),
        ({"data": {"name": "tsvv"}}, "data: unknown data kind 'tsvv'"),
    ]
    for extra, needle in cases:
        path = tmp_path / "r.yaml"
        path.write_text(yaml.safe_dump({"plan": plan, **extra}))
        code, _, err = run_cli(capsys, "inspect", str(path))
        assert code == 2 and needle in err, (needle, err)
    # all at once, with a pointer to the documentation that has the keys
    path.write_text(yaml.safe_dump({"plan": plan, "task": {"args": {"a": 1}}, "model": {"args": {"b": 2}},
                                    "data": {"name": "pairs", "train": "a.tsv", "dev": "b.tsv", "c": 3}}))
    code, _, err = run_cli(capsys, "inspect", str(path))
    assert "3 problem(s)" in err and "task.args.a" in err and "model.args.b" in err and "data.c" in err
    assert "docs/guides/own-data.md, 'Pair files'" in err


@pytest.mark.parametrize("argv", [
    ["eval", "--beam", "2", "RUN", "--split", "dev", "--max-len", "9"],
    ["eval", "RUN", "--split", "dev", "RUN2", "--max-len", "9"],  # two runs: an ensemble
    ["predict", "RUN", "--beam", "3", "a", "--join", "", "b", "--max-len", "4"],
    ["train", "R.yaml", "--max-steps", "1", "run_dir=x", "--overwrite"],
    ["resume", "--max-steps", "5", "RUN", "--allow-plan-change"],
    ["inspect", "R.yaml", "plan.0.epochs=1"],
    ["export", "--latest", "RUN", "OUT"],
    ["demo", "--minutes", "1", "--run-dir", "d"],
])
def test_options_may_come_anywhere_for_every_command(argv):
    from partwise.cli import parse_args

    args = parse_args(argv)
    assert args.command == argv[0]
    if argv[0] == "predict":
        assert args.inputs == ["a", "b"] and args.beam == 3 and args.join == "" and args.max_len == 4
    if argv[0] == "eval":
        assert args.run_dir == [w for w in argv if w.startswith("RUN")] and args.max_len == 9


def test_spellings_of_unreleased_versions_are_refused_with_the_key_named():
    """0.1.0 was never released: its ``tsv`` data name and ``tokenize``/``tgt_tokenize`` keys are not
    read as today's; a recipe using them gets the usual error naming the key."""
    from partwise.cli._config import validate

    plan = [{"name": "p", "epochs": 1, "train": {"encoder": 1e-3}}]
    with pytest.raises(pw.ConfigError, match="data"):
        validate({"data": {"name": "tsv", "train": "a.tsv", "dev": "b.tsv"}, "plan": plan}, "old")
    with pytest.raises(pw.ConfigError, match="tgt_tokenize"):
        validate({"data": {"name": "pairs", "train": "a.tsv", "dev": "b.tsv", "tgt_tokenize": "char"},
                  "plan": plan}, "old")


def test_model_args_schemas_match_the_factories_they_describe():
    import inspect

    from partwise.recipe import get_kind
    from partwise.seq2seq import gru_seq2seq, transformer_seq2seq
    from partwise.tasks._digits import DigitsCycle
    from partwise.tasks._stress import stress_model

    def keys(fn, skip):
        return set(list(inspect.signature(fn).parameters)[skip:])

    seq2seq, stress, digits = (get_kind(k).model_args for k in ("seq2seq", "stress", "digits_cycle"))
    assert set(seq2seq["gru"].model_fields) == keys(gru_seq2seq, 2)
    assert set(seq2seq["transformer"].model_fields) == keys(transformer_seq2seq, 2)
    # the stress model's encoder_shape comes from task.args.encoder (a run's config), not model.args
    assert set(stress["gru"].model_fields) == keys(stress_model, 1) - {"max_syllables", "encoder_shape"}
    assert set(digits["mlp"].model_fields) == keys(DigitsCycle, 0) - {"seed"}


def test_a_recipe_chooses_where_a_phase_schedule_counts_from():
    from partwise.cli._config import validate
    from partwise.recipe import build_teacher_forcing as teacher_forcing

    plan = [{"name": "a", "epochs": 1, "train": {"encoder": 1e-3}},
            {"name": "b", "epochs": 1, "train": {"decoder": 1e-3}, "teacher_forcing": {
                "schedule": {"name": "linear", "c": 0.1, "k": 1.0}, "count_from": "phase"}}]
    recipe = validate({"plan": plan}, "r")
    tf = teacher_forcing(recipe.plan[1].teacher_forcing, "plan.1.teacher_forcing")
    tf.enter_phase(10)
    assert tf.count_from == "phase" and tf.ratio(10) == 1.0
    assert validate({"plan": plan[:1]}, "r").teacher_forcing is None
    bad = [plan[0], {**plan[1], "teacher_forcing": {"count_from": "epoch"}}]
    with pytest.raises(Exception, match="plan.1.teacher_forcing.count_from"):
        validate({"plan": bad}, "r")
