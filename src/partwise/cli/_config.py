"""Reading a recipe file for the CLI: YAML, ``key=value`` overrides, then the library's validation
(:mod:`partwise.recipe`) with custom model factories resolved from the recipe's folder."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._errors import ConfigError
from ..recipe import Recipe, apply_overrides
from ..recipe import validate as validate_recipe

__all__ = ["load_recipe", "validate"]


def validate(raw: Any, source: str) -> Recipe:
    """:func:`partwise.recipe.validate`, checking a custom ``package.module:factory`` model's args
    against the factory's signature."""
    from ..tasks._seq2seq import resolve_factory

    return validate_recipe(raw, source, resolve_factory)


def load_recipe(path: str | Path, overrides: Sequence[str] = ()) -> tuple[Recipe, dict[str, Any]]:
    """Read, override and validate a recipe; returns it and the raw (overridden) mapping."""
    from .._run._runfolder import read_yaml
    from ._recipes import packaged_recipe, recipe_names

    p = Path(path)
    if not p.exists() and (packaged := packaged_recipe(str(path))) is not None:
        p = packaged  # a packaged recipe by name: `partwise train g2p`
    if not p.exists():
        raise ConfigError([f"recipe file not found: {str(p)!r} (give a path such as recipes/g2p.yaml, or the name "
                           f"of a packaged recipe: {', '.join(recipe_names())})"])
    if not p.is_file():
        raise ConfigError([f"recipe {str(p)!r} is a folder, not a file (give a path such as recipes/g2p.yaml)"])
    raw = read_yaml(p, "fix the recipe (see recipes/g2p.yaml for a commented example)")
    raw = apply_overrides(raw if raw is not None else {}, list(overrides), str(p))
    for key in ("model", "task"):  # a custom factory or task kind is imported from the recipe's folder
        section = raw.get(key) if isinstance(raw, dict) else None
        if isinstance(section, dict) and ":" in str(section.get("name", "")) and section.get("path") is None:
            section["path"] = str(p.resolve().parent)
    return validate(raw, str(p)), raw


