"""Every page of the documentation runs as written (see ``docs_runner.py``): its Python blocks, its
files and its commands, with the results the page claims; and every page is in the site's nav."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest
import yaml

from processes import clean_env, run_bounded

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(p for p in DOCS.rglob("*.md"))


def _param(page: Path):
    text = page.read_text(encoding="utf-8")
    marks = [pytest.mark.slow] if "<!-- slow -->" in text else []
    return pytest.param(page, marks=marks, id=str(page.relative_to(DOCS)))


@pytest.mark.parametrize("page", [_param(p) for p in PAGES])
def test_the_page_runs_as_written(page: Path, tmp_path: Path):
    text = page.read_text(encoding="utf-8")
    for needed in re.findall(r"<!-- needs: (.*?) -->", text):
        for module in needed.split():
            if importlib.util.find_spec(module) is None:
                pytest.skip(f"needs {module}")
    proc = run_bounded([sys.executable, str(ROOT / "tests" / "docs_runner.py"), str(page)], timeout=420,
                       cwd=str(tmp_path), env=clean_env(HF_HUB_OFFLINE="1"))
    assert proc.returncode == 0, (proc.stdout[-2000:] + proc.stderr[-3000:])


def test_every_page_is_in_the_nav_and_every_nav_entry_exists():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8").replace("!!python", "python"))

    def entries(nav):
        for item in nav:
            for value in item.values():
                yield from entries(value) if isinstance(value, list) else [value]

    listed = set(entries(config["nav"]))
    assert listed == {str(p.relative_to(DOCS)) for p in PAGES}
