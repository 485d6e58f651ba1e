"""The built wheel installs into a fresh virtual environment outside the repository and gives what
the documentation promises: the console script, the packaged recipes and a short training run."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import partwise

ROOT = Path(__file__).resolve().parents[1]
TORCH = "torch==2.13.0"  # as the Makefile pins it


def _run(cmd: list[str], cwd: Path, timeout: float = 600) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, f"{' '.join(cmd)}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.mark.slow
def test_the_wheel_installs_and_runs_outside_the_repository(tmp_path: Path):
    pytest.importorskip("build")
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(ROOT)], cwd=tmp_path)
    wheel = next(dist.glob("partwise-*.whl"))
    assert wheel.name == f"partwise-{partwise.__version__}-py3-none-any.whl"  # the version is written once
    assert next(dist.glob("partwise-*.tar.gz")).name == f"partwise-{partwise.__version__}.tar.gz"
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(n.removeprefix("partwise/recipes/") for n in names if n.startswith("partwise/recipes/"))
    assert shipped == sorted(p.name for p in (ROOT / "recipes").iterdir() if p.is_file())
    assert "partwise/py.typed" in names

    venv, work = tmp_path / "venv", tmp_path / "elsewhere"
    work.mkdir()
    _run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", str(venv)], cwd=tmp_path)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    _run([*pip, TORCH], cwd=work)  # first, pinned, as the install guide says
    _run([*pip, f"{wheel}[data]"], cwd=work)
    exe = str(venv / "bin" / "partwise")

    assert "recipes" in _run([exe, "--help"], cwd=work)
    assert _run([exe, "--version"], cwd=work).strip() == f"partwise {partwise.__version__}"
    where = _run([str(venv / "bin" / "python"), "-c", "import partwise; print(partwise.__file__)"], cwd=work)
    assert where.startswith(str(venv)), where  # the installed package, not the repository's
    assert "g2p_transformer" in _run([exe, "recipes"], cwd=work)
    assert "phase 0" in _run([exe, "inspect", "g2p", "data.limit=40"], cwd=work)
    out = _run([exe, "train", "g2p", "data.limit=40", "training.threads=1", "run_dir=runs/short",
                "--max-steps", "2"], cwd=work)
    assert "dev" in out and (work / "runs" / "short" / "report.md").is_file()
    _run([exe, "recipes", "copy", "inflection", "mine"], cwd=work)
    assert (work / "mine" / "inflection.yaml").read_bytes() == (ROOT / "recipes" / "inflection.yaml").read_bytes()
