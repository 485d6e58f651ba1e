"""A task kind of one's own, as the guide writes it (docs/guides/own-data.md): one new file, nothing in
partwise edited."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import partwise as pw
from partwise.recipe import Kind, get_kind, register_kind

from .cli_helpers import run_cli

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "guides" / "own-data.md"


def _files(tmp_path: Path) -> Path:
    section = GUIDE.read_text(encoding="utf-8").split("## Your own task kind", 1)[1].split("\n## ", 1)[0]
    kind_py = re.findall(r"```python[^\n]*\n(.*?)```", section, flags=re.S)[0]
    recipe = re.findall(r"```yaml[^\n]*\n(.*?)```", section, flags=re.S)[0]
    (tmp_path / "sumkind.py").write_text(kind_py, encoding="utf-8")
    (tmp_path / "sum.yaml").write_text(recipe, encoding="utf-8")
    return tmp_path / "sum.yaml"


def test_the_guide_kind_trains_evaluates_and_has_its_args_checked(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = _files(tmp_path)
    code, _, err = run_cli(capsys, "inspect", str(recipe), "task.args.rowz=3")
    assert code == 2 and "task.args.rowz: unknown key; keys are rows" in err
    code, out, err = run_cli(capsys, "train", str(recipe))
    assert code == 0, err
    assert "dev: loss" in out and "step 12 of 12" in out
    code, out, err = run_cli(capsys, "eval", "runs/sum", "--split", "dev")
    assert code == 0 and out.startswith("dev: loss"), err
    code, _, err = run_cli(capsys, "predict", "runs/sum", "1 2")
    assert code == 2 and "make no predictions" in err


def test_registered_and_unknown_kinds(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    _files(tmp_path)
    register_kind("sum_readme", "sumkind:Sum")
    kind = get_kind("sum_readme")
    assert isinstance(kind, Kind) and kind.default_best(None) == ("loss", "min")  # type: ignore[arg-type]
    with pytest.raises(pw.ConfigError, match="task.name: 'sums' is not a task kind; choose one of"):
        get_kind("sums")
    with pytest.raises(pw.ConfigError, match="register_kind: 'seq2seq' is a built-in kind"):
        register_kind("seq2seq", "sumkind:Sum")
    with pytest.raises(pw.ConfigError, match="not a subclass of partwise.recipe.Kind"):
        get_kind("sumkind:SumTask")
