"""The recipes shipped inside the package (``partwise/recipes/*.yaml``): listed, found by name, copied out.

``partwise train g2p`` runs the packaged ``g2p.yaml`` when no file ``g2p`` exists; ``partwise recipes``
lists them with their first comment line; ``partwise recipes copy g2p [DIR]`` writes an editable copy
(with its companion ``prepare_<name>.py`` script, if it has one) and never overwrites a file.
"""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

from .._errors import ConfigError

__all__ = ["recipe_names", "packaged_recipe", "describe_recipes", "copy_recipe", "recipes_command"]


def _folder() -> Path:
    return Path(str(resources.files("partwise") / "recipes"))


def recipe_names() -> list[str]:
    """The names of the packaged recipes (``g2p`` for ``g2p.yaml``)."""
    folder = _folder()
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def packaged_recipe(name: str) -> Path | None:
    """The packaged recipe called ``name`` (``g2p`` or ``g2p.yaml``), or ``None``."""
    stem = name.removesuffix(".yaml").removesuffix(".yml")
    if "/" in name or "\\" in name or stem not in recipe_names():
        return None
    return _folder() / f"{stem}.yaml"


def _title(path: Path) -> str:
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def describe_recipes() -> str:
    """One line per packaged recipe: its name and the first line of its header comment."""
    names = recipe_names()
    width = max((len(n) for n in names), default=0)
    lines = [f"  {n:<{width}}  {_title(_folder() / f'{n}.yaml')}" for n in names]
    return "\n".join(["packaged recipes (partwise train NAME; partwise recipes copy NAME DIR for a copy to edit):",
                      *lines])


def copy_recipe(name: str, dest: str | Path = ".") -> list[Path]:
    """Copy packaged recipe ``name`` (and its ``prepare_<name>.py``, if any) into folder ``dest``;
    refuses to overwrite anything. Returns the files written."""
    source = packaged_recipe(name)
    if source is None:
        raise ConfigError([f"recipes copy: {name!r} is not a packaged recipe; choose one of {recipe_names()}"])
    out = Path(dest)
    if out.exists() and not out.is_dir():
        raise ConfigError([f"recipes copy: {str(out)!r} is a file; give a folder to copy the recipe into"])
    files = [source] + sorted(_folder().glob(f"prepare_{source.stem}.py"))
    targets = [out / f.name for f in files]
    existing = [str(t) for t in targets if t.exists()]
    if existing:
        raise ConfigError([f"recipes copy: {', '.join(existing)} already exists; nothing was overwritten: remove it or "
                           "give another folder"])
    out.mkdir(parents=True, exist_ok=True)
    for f, t in zip(files, targets, strict=True):
        shutil.copyfile(f, t)
    return targets


def recipes_command(action: str | None, name: str | None, dest: str | None) -> int:
    """``partwise recipes`` (list), ``partwise recipes copy NAME [DIR]``, ``partwise recipes path NAME``."""
    if action in (None, "list"):
        print(describe_recipes(), flush=True)
        return 0
    if name is None:
        raise ConfigError([f"recipes {action}: give a recipe name, one of {recipe_names()}"])
    if action == "path":
        path = packaged_recipe(name)
        if path is None:
            raise ConfigError([f"recipes path: {name!r} is not a packaged recipe; choose one of {recipe_names()}"])
        print(path, flush=True)
        return 0
    for written in copy_recipe(name, dest or "."):
        print(f"wrote {written}", flush=True)
    return 0
