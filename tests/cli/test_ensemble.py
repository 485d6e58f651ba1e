"""`partwise eval RUN1 RUN2` and `partwise predict RUN1 RUN2 ...`: an ensemble of runs of the same task
and vocabularies; two copies of one run score as that run; different vocabularies are refused."""

from __future__ import annotations

import shutil

from .cli_helpers import TINY, run_cli, write_recipe


def test_an_ensemble_of_a_run_with_itself_scores_as_the_run(finished_run, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(finished_run, copy)
    code, alone, err = run_cli(capsys, "eval", str(finished_run), "--split", "dev")
    assert code == 0, err
    code, both, err = run_cli(capsys, "eval", str(finished_run), str(copy), "--split", "dev")
    assert code == 0 and "ensemble of 2 runs" in both, err
    assert both.split("  (")[0] == alone.split("  (")[0]  # the same figures
    code, out, err = run_cli(capsys, "predict", str(finished_run), str(copy), "hello", "world")
    assert code == 0, err
    _, single, _ = run_cli(capsys, "predict", str(finished_run), "hello", "world")
    assert out == single and out.startswith("hello\t")


def test_runs_with_different_vocabularies_are_refused_naming_the_difference(finished_run, tmp_path, capsys):
    recipe = write_recipe(tmp_path, {**TINY, "data": {"name": "cmudict", "limit": 30}, "run_dir": str(tmp_path / "o")})
    assert run_cli(capsys, "train", str(recipe), "--max-steps", "1")[0] == 0
    code, _, err = run_cli(capsys, "eval", str(finished_run), str(tmp_path / "o"), "--split", "dev")
    assert code == 2 and "vocabulary differs from" in err and "an ensemble needs runs trained on the same" in err
