"""Selectors: how a part names the parameters and modules it owns.

A selector is one of

* a module path: ``"encoder"``, ``"decoder.out"`` — that module and everything below it;
* a glob over module paths: ``"decoder.layers.*"`` (``fnmatch`` rules; ``*`` also crosses dots);
* a regex over parameter names, fully matched: ``"re:.*embed.*"``;
* a module type by class name: ``"type:BatchNorm1d"`` — every module of that class, and below it.

Prefix any selector with ``!`` to exclude what it matches from the part.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field

from torch import nn

from .._errors import PartError
from ._names import closest

__all__ = ["Selection", "resolve"]

_GLOB_CHARS = set("*?[")


@dataclass
class Selection:
    """What a list of selectors picked: parameter names and module paths (both full dotted paths)."""

    param_names: set[str] = field(default_factory=set)
    module_paths: set[str] = field(default_factory=set)


def _subtree(path: str, all_modules: dict[str, nn.Module]) -> set[str]:
    if path == "":
        return set(all_modules)
    prefix = path + "."
    return {p for p in all_modules if p == path or p.startswith(prefix)}


def _params_under(paths: set[str], param_names: list[str]) -> set[str]:
    out = set()
    for name in param_names:
        owner = name.rpartition(".")[0]
        if owner in paths:
            out.add(name)
    return out


def _match_one(
    selector: str, all_modules: dict[str, nn.Module], param_names: list[str], where: str
) -> Selection:
    if selector.startswith("re:"):
        pattern = selector[3:]
        try:
            rx = re.compile(pattern)
        except re.error as e:
            raise PartError(f"{where}: invalid regex {pattern!r} ({e}); write e.g. 're:.*embed.*'") from None
        names = {n for n in param_names if rx.fullmatch(n)}
        if not names:
            raise PartError(
                f"{where}: regex {selector!r} matches no parameter name (it must match the whole name); "
                f"names look like {closest(pattern, param_names)}"
            )
        owners = {n.rpartition(".")[0] for n in names}
        return Selection(names, owners)
    if selector.startswith("type:"):
        type_name = selector[5:]
        roots = {
            p
            for p, m in all_modules.items()
            if type(m).__name__ == type_name or f"{type(m).__module__}.{type(m).__qualname__}" == type_name
        }
        if not roots:
            types = sorted({type(m).__name__ for m in all_modules.values()})
            raise PartError(
                f"{where}: no module of type {type_name!r} in the model; types present: "
                f"{closest(type_name, types)}"
            )
        paths = set().union(*(_subtree(r, all_modules) for r in roots))
        return Selection(_params_under(paths, param_names), paths)
    module_names = [p for p in all_modules if p]
    if _GLOB_CHARS & set(selector):
        roots = {p for p in module_names if fnmatch.fnmatchcase(p, selector)}
        if not roots:
            raise PartError(
                f"{where}: glob {selector!r} matches no module path; closest paths: "
                f"{closest(selector, module_names)}"
            )
        paths = set().union(*(_subtree(r, all_modules) for r in roots))
        return Selection(_params_under(paths, param_names), paths)
    if selector not in all_modules or selector == "":
        raise PartError(
            f"{where}: no module at path {selector!r}; closest: {closest(selector, module_names)}"
        )
    paths = _subtree(selector, all_modules)
    return Selection(_params_under(paths, param_names), paths)


def resolve(
    selectors: list[str], all_modules: dict[str, nn.Module], param_names: list[str], where: str
) -> Selection:
    """Resolve a part's selectors (``!``-prefixed ones exclude) into parameter names and module paths.

    ``param_names`` must list every name a parameter is reachable under (tied tensors included).
    """
    include, exclude = Selection(), Selection()
    for sel in selectors:
        if not isinstance(sel, str) or not sel.strip("!"):
            raise PartError(f"{where}: selector {sel!r} must be a non-empty string such as 'encoder'")
        target, text = (exclude, sel[1:]) if sel.startswith("!") else (include, sel)
        got = _match_one(text, all_modules, param_names, f"{where} selector {sel!r}")
        target.param_names |= got.param_names
        target.module_paths |= got.module_paths
    return Selection(
        include.param_names - exclude.param_names, include.module_paths - exclude.module_paths
    )
