"""The partwise command line: a real (tiny) run end to end, and every kind of bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import partwise as pw
from partwise.cli import main

TINY = {
    "data": {"name": "cmudict", "limit": 300},
    "model": {"name": "gru", "args": {"emb": 16, "hidden": 32, "attention": "dot", "dropout": 0.0}},
    "separate": True,
    "plan": [
        {"name": "joint", "steps": 12, "train": {"encoder": 3e-3, "decoder": 5e-3}},
        {"name": "decoder", "steps": 6, "train": {"decoder": 1e-3},
         "teacher_forcing": {"schedule": {"name": "inverse_sigmoid", "k": 5}, "mode": "two_pass"}},
    ],
    "training": {"batch_size": 32, "best_metric": "wer"},
}


def write_recipe(tmp_path: Path, recipe: dict, name: str = "tiny.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), **recipe}), encoding="utf-8")
    return path


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.slow
def test_train_eval_predict_inspect_resume(tmp_path, capsys):
    recipe = write_recipe(tmp_path, TINY)
    run = tmp_path / "run"
    code, out, err = run_cli(capsys, "train", str(recipe), "--max-steps", "8")
    assert code == 0, err
    assert (run / "config.yaml").is_file() and (run / "artifacts.json").is_file()
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["training"]["grad_clip"] == 1.0  # defaults filled in
    code, out, err = run_cli(capsys, "resume", str(run))
    assert code == 0, err
    assert "dev: loss" in out and "wer " in out
    metrics = (run / "metrics.csv").read_text().splitlines()
    assert len(metrics) >= 2 and "dev_wer" in metrics[0]
    assert (run / "report.md").is_file() and (run / "loss.png").is_file()
    code, out, _ = run_cli(capsys, "eval", str(run), "--split", "test")
    assert code == 0 and out.startswith("test: loss") and "wer " in out and "per " in out
    code, out, _ = run_cli(capsys, "predict", str(run), "hello", "world")
    lines = out.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == ["hello", "world"]
    code, out, _ = run_cli(capsys, "inspect", str(recipe), "plan.1.steps=3")
    assert code == 0 and "phase 1 'decoder': 3 step(s)" in out and "frozen: encoder" in out


def test_train_overrides_are_applied_and_validated(tmp_path, capsys):
    recipe = write_recipe(tmp_path, TINY)
    code, out, _ = run_cli(capsys, "inspect", str(recipe), "training.batch_size=64", "plan.0.train.encoder=1e-5")
    assert code == 0 and "lr 1e-05" in out
    code, _, err = run_cli(capsys, "inspect", str(recipe), "training.batch_size=-1", "plan.0.epochs=two")
    assert code == 2
    assert "training.batch_size" in err and "plan.0.epochs" in err and err.count("\n") == 1


def test_missing_recipe_file(capsys, tmp_path):
    code, _, err = run_cli(capsys, "train", str(tmp_path / "nope.yaml"))
    assert code == 2 and "recipe file not found" in err and "nope.yaml" in err


def test_malformed_yaml_names_the_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("plan:\n  - name: a\n    train: {decoder: 1e-3\n", encoding="utf-8")
    code, _, err = run_cli(capsys, "train", str(bad))
    assert code == 2 and "malformed YAML at line" in err


def test_all_schema_errors_reported_at_once_with_paths(tmp_path, capsys):
    recipe = write_recipe(tmp_path, {**TINY, "modle": {}, "training": {"batch_size": "big", "precision": "fp8"},
                                     "plan": [{"name": "x", "train": {"decoder": -1.0}}]})
    code, _, err = run_cli(capsys, "train", str(recipe))
    assert code == 2
    for path in ("modle: unknown key", "training.batch_size", "training.precision", "plan.0"):
        assert path in err, path
    assert not (tmp_path / "run").exists()


def test_unknown_part_in_plan_is_a_config_error(tmp_path, capsys):
    recipe = write_recipe(tmp_path, {**TINY, "plan": [{"name": "x", "steps": 2, "train": {"decodr": 1e-3}}]})
    code, _, err = run_cli(capsys, "train", str(recipe))
    assert code == 2 and "plan.0.train.decodr: unknown part" in err
    assert not (tmp_path / "run").exists()


def test_tsv_with_bad_lines_is_reported_with_line_numbers(tmp_path, capsys):
    (tmp_path / "train.tsv").write_text("cat\tK AE T\ndog D AO G\nbird\tB ER D\n\n", encoding="utf-8")
    (tmp_path / "dev.tsv").write_text("cat\tK AE T\n", encoding="utf-8")
    recipe = write_recipe(tmp_path, {**TINY, "training": {**TINY["training"], "best_metric": "seq_error"},
                                     "data": {"name": "pairs", "train": str(tmp_path / "train.tsv"),
                                              "dev": str(tmp_path / "dev.tsv")}})
    code, _, err = run_cli(capsys, "train", str(recipe))
    assert code == 2 and "line 2" in err and "train.tsv" in err


def test_existing_run_dir_is_not_overwritten(tmp_path, capsys):
    recipe = write_recipe(tmp_path, TINY)
    run = tmp_path / "run"
    run.mkdir()
    (run / "precious.txt").write_text("keep me")
    for extra in ([], ["--overwrite"]):  # a folder that is not a partwise run is never written or removed
        code, _, err = run_cli(capsys, "train", str(recipe), *extra)
        assert code == 2 and "is not a partwise run" in err and "precious.txt" in err
        assert (run / "precious.txt").read_text() == "keep me" and len(list(run.iterdir())) == 1


def test_eval_of_a_checkpoint_from_another_model(tmp_path, capsys):
    recipe = write_recipe(tmp_path, {**TINY, "plan": [{"name": "x", "steps": 2, "train": {"decoder": 1e-3}}]})
    run = tmp_path / "run"
    assert run_cli(capsys, "train", str(recipe))[0] == 0
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["model"]["args"]["hidden"] = 48  # the run's checkpoint no longer fits its config
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    code, _, err = run_cli(capsys, "eval", str(run))
    assert code == 2 and "does not fit this model" in err


def test_not_a_run_directory(tmp_path, capsys):
    code, _, err = run_cli(capsys, "eval", str(tmp_path))
    assert code == 2 and "not a run directory" in err
    code, _, err = run_cli(capsys, "resume", str(tmp_path))
    assert code == 2


def test_console_script_exit_code_and_no_traceback(tmp_path):
    exe = Path(sys.executable).with_name("partwise")
    proc = subprocess.run([str(exe), "train", str(tmp_path / "missing.yaml")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.startswith("partwise: error:")
    helped = subprocess.run([str(exe), "train", "--help"], capture_output=True, text=True)
    assert helped.returncode == 0 and "example:" in helped.stdout and "partwise train recipes/g2p.yaml" in helped.stdout


def test_resume_under_an_edited_plan_needs_allow_plan_change(tmp_path, capsys):
    recipe = write_recipe(tmp_path, {**TINY, "plan": [{"name": "x", "steps": 2, "train": {"decoder": 1e-3}}]})
    run = tmp_path / "run"
    assert run_cli(capsys, "train", str(recipe))[0] == 0
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["plan"][0]["steps"] = 3  # extend the last phase
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    code, _, err = run_cli(capsys, "resume", str(run))
    assert code == 2 and "phase 0 ('x').steps: checkpoint 2, now 3" in err and "--allow-plan-change" in err
    with pytest.warns(RuntimeWarning, match="resuming under a changed plan"):
        code, _, err = run_cli(capsys, "resume", str(run), "--allow-plan-change")
    assert code == 0, err
    assert (run / "plan_changes.txt").read_text() == "step 2: phase 0 ('x').steps: checkpoint 2, now 3\n"


def test_average_last_averages_scores_and_reports_the_average(tmp_path, capsys):
    from partwise._run import _checkpoint

    plan = [{"name": "joint", "epochs": 3, "train": {"encoder": 3e-3, "decoder": 5e-3}}]
    recipe = write_recipe(tmp_path, {**TINY, "plan": plan, "run_dir": str(tmp_path / "run"),
                                     "training": {**TINY["training"], "average_last": 3}})
    code, out, _ = run_cli(capsys, "train", str(recipe))
    assert code == 0
    root = tmp_path / "run" / "checkpoints"
    meta = _checkpoint.read_meta(root / "averaged")
    ends = [p.name for p in _checkpoint.epoch_end_checkpoints(root)]
    assert meta["averaged_from"] == ends and len(ends) == 3  # one per epoch, all kept for the average
    log = (tmp_path / "run" / "log.txt").read_text()
    assert f"averaged 3 epoch-end checkpoints ({ends[0]} .. {ends[-1]}): dev loss " in log
    chosen = (root / "best").read_text().strip() == "averaged"
    assert ("it is now the best checkpoint" in log) == chosen
    report = (tmp_path / "run" / "report.md").read_text()
    assert ("the average of 3 epoch-end checkpoints" in report) == chosen


def test_average_last_without_best_metric_is_refused_before_the_run(tmp_path, capsys):
    recipe = write_recipe(tmp_path, {**TINY, "training": {**TINY["training"], "best_metric": None,
                                                          "average_last": 3}})
    code, _, err = run_cli(capsys, "train", str(recipe))
    assert code == 2 and "training: average_last needs best_metric" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", ["g2p", "g2p_transformer", "retarget_stress", "inflection", "digits_cycle"])
def test_shipped_recipes_pass_every_check_before_training(name, capsys):
    """`partwise inspect` checks a recipe whole (schema, task and model args, parts, every phase's
    optimizer) without reading data for training; the shipped recipes must pass it."""
    recipe = Path(__file__).resolve().parents[2] / "recipes" / f"{name}.yaml"
    if name == "inflection" and not (recipe.parent / "data" / "inflection").exists():
        pytest.skip("inflection's pair files are written by recipes/prepare_inflection.py")
    code, out, err = run_cli(capsys, "inspect", str(recipe))
    assert code == 0, err
    assert "phase 0" in out


def test_grad_clip_zero_is_no_clipping_in_the_recipe_as_in_the_trainer(tmp_path, capsys):
    """The recipe checks use the Trainer's own clipping rule, so a recipe they pass the Trainer takes."""
    recipe = write_recipe(tmp_path, TINY)
    code, _, err = run_cli(capsys, "inspect", str(recipe), "training.grad_clip=0")
    assert code == 0, err
    code, _, err = run_cli(capsys, "inspect", str(recipe), "training.grad_clip=-1")
    assert code == 2 and "training.grad_clip: -1" in err and "0 or None: no clipping" in err


def test_the_recipe_checks_refuse_a_best_metric_the_trainer_would_refuse(tmp_path, capsys):
    """One metric rule (the Trainer's): the recipe checks accepted ``best_metric: epoch`` (and ``lr/...``),
    which the Trainer then refused after the data was read."""
    recipe = write_recipe(tmp_path, TINY)
    for name in ("epoch", "lr/encoder"):
        code, _, err = run_cli(capsys, "inspect", str(recipe), f"training.best_metric={name}")
        assert code == 2 and f"training.best_metric: metric '{name}' will not be produced" in err, err
    code, _, err = run_cli(capsys, "inspect", str(recipe), "training.best_metric=dev_wer")
    assert code == 0, err


@pytest.mark.parametrize(("args", "needle"), [
    ({}, "model.args: give exactly one of path"),
    ({"path": "x", "config": {"model_type": "t5"}}, "model.args: give exactly one of path"),
    ({"config": {"d_model": 3}}, "model.args: config must be a mapping with model_type"),
])
def test_hf_model_args_are_checked_once_when_the_recipe_is_read(args, needle):
    """One rule for ``model: hf`` args (the HFArgs schema), applied before anything else runs."""
    from partwise.cli._config import validate

    plan = [{"name": "a", "epochs": 1, "train": {"decoder": 1e-3}}]
    with pytest.raises(pw.ConfigError, match=needle):
        validate({"model": {"name": "hf", "args": args}, "plan": plan}, "r.yaml")


def test_the_packaged_recipes_are_the_repository_recipes_and_the_cli_lists_them(capsys):
    from partwise.cli._recipes import packaged_recipe, recipe_names

    repo = Path(__file__).resolve().parents[2] / "recipes"
    assert recipe_names() == sorted(p.stem for p in repo.glob("*.yaml"))
    assert all(packaged_recipe(n).read_bytes() == (repo / f"{n}.yaml").read_bytes() for n in recipe_names())
    code, out, _ = run_cli(capsys, "recipes")
    assert code == 0 and all(f"  {n} " in out for n in recipe_names())
    code, out, _ = run_cli(capsys, "recipes", "path", "g2p")
    assert code == 0 and out.strip() == str(packaged_recipe("g2p"))


def test_a_packaged_recipe_runs_by_name_and_a_copy_never_overwrites(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, "inspect", "g2p", "data.limit=30")
    assert code == 0 and "phase 0" in out, err
    code, out, _ = run_cli(capsys, "recipes", "copy", "inflection", "mine")
    assert code == 0 and sorted(p.name for p in (tmp_path / "mine").iterdir()) == [
        "inflection.yaml", "prepare_inflection.py"]
    (tmp_path / "mine" / "inflection.yaml").write_text("# edited\n")
    code, _, err = run_cli(capsys, "recipes", "copy", "inflection", "mine")
    assert code == 2 and "already exists; nothing was overwritten" in err
    assert (tmp_path / "mine" / "inflection.yaml").read_text() == "# edited\n"
    code, _, err = run_cli(capsys, "train", "g2q")
    assert code == 2 and "recipe file not found: 'g2q'" in err and "g2p_transformer" in err
