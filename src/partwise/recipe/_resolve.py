"""Importing what a recipe names by ``package.module:name``: custom model factories and task kinds."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

from .._errors import ConfigError

__all__ = ["import_object"]


def import_object(spec: str, path: str | None = None, key: str = "model.name", docs: str = "docs/recipes.md") -> Any:
    """The object ``package.module:name`` names, imported with ``path`` (a folder: the recipe's, unless
    the recipe says otherwise) first on ``sys.path``; a :class:`~partwise.ConfigError` naming ``key``
    otherwise.

    Examples:
        >>> import_object("math:pi") > 3
        True
    """
    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise ConfigError([f"{key}: {spec!r} is not 'package.module:name' (see {docs})"])
    if path is not None:
        folder = str(Path(path).resolve())
        if not Path(folder).is_dir():
            raise ConfigError([f"{key.rsplit('.', 1)[0]}.path: {path!r} is not a folder; give the folder that holds "
                               f"{module!r}"])
        if folder not in sys.path:
            sys.path.insert(0, folder)
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        where = f" (looked in {path!r} and on sys.path)" if path else ""
        raise ConfigError([f"{key}: cannot import {spec!r}{where}: {e}"]) from None
