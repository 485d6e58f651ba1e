"""Untying: give a module its own copy of a parameter it shares with the rest of the model.

Tied tensors (one token embedding for encoder, decoder and output layer, as in T5, BART and Marian)
cannot be frozen on one side only. :func:`untie` gives each listed module a copy, so that the
module's part can be frozen, trained or given its own learning rate independently.

Models with Hugging Face-style tie bookkeeping (a ``config`` and ``get_expanded_tied_weights_keys``)
are detected by duck typing — this module never imports ``transformers``: the untied pairs are removed
from the model's own tie mapping (so ``model.tie_weights()`` and ``save_pretrained`` do not tie them
again), and a config whose ties are all gone gets ``tie_word_embeddings = False`` (so
``from_pretrained`` does not re-tie them either).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .._errors import PartError
from ._freezing import trainable_by_nature
from ._names import closest

__all__ = ["untie", "UntieReport", "Untied"]


@dataclass(frozen=True)
class Untied:
    """One tensor split in two: ``names`` now reach a new copy, ``kept`` still reach the original."""

    module: str
    names: tuple[str, ...]
    kept: tuple[str, ...]


@dataclass
class UntieReport:
    """What :func:`untie` did: the tensors it copied and the tie settings it changed."""

    untied: list[Untied] = field(default_factory=list)
    config_changes: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.untied)

    @property
    def names(self) -> list[str]:
        """Every parameter name that now reaches a new copy."""
        return [n for u in self.untied for n in u.names]

    def __str__(self) -> str:
        if not self.untied:
            return "untie: nothing shared"
        lines = [f"untied {', '.join(u.names)} from {', '.join(u.kept)}" for u in self.untied]
        return "\n".join(lines + self.config_changes)


def _names_by_tensor(model: nn.Module) -> dict[int, tuple[nn.Parameter, list[str]]]:
    out: dict[int, tuple[nn.Parameter, list[str]]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        out.setdefault(id(p), (p, []))[1].append(name)
    return out


def _under(name: str, path: str) -> bool:
    return name.startswith(path + ".")


def _own_module(model: nn.Module, path: str) -> nn.Module:
    """The module at ``path``, replaced by a shallow copy first if it is also reachable elsewhere."""
    parent_path, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    module = model.get_submodule(path)
    elsewhere = [n for n, m in model.named_modules(remove_duplicate=False) if m is module and n != path]
    if elsewhere:
        module = copy.copy(module)
        module._parameters = dict(module._parameters)
        module._buffers = dict(module._buffers)
        module._modules = dict(module._modules)
        setattr(parent, attr, module)
    return module


def untie(model: nn.Module, *module_paths: str) -> UntieReport:
    """Give each module in ``module_paths`` its own copy of every parameter it shares with the rest
    of the model. Names inside one listed module keep sharing among themselves; the copy keeps the
    original's values and its own ``requires_grad`` (a frozen original's copy is not frozen: the model
    changed, so registries over it are built again and freeze it there). Returns an :class:`UntieReport`.

    Examples:
        >>> from torch import nn
        >>> model = nn.Module()
        >>> model.embed, model.head = nn.Embedding(5, 3), nn.Linear(3, 5, bias=False)
        >>> model.head.weight = model.embed.weight                  # tied
        >>> print(untie(model, "head"))
        untied head.weight from embed.weight
        >>> model.head.weight is model.embed.weight
        False
    """
    if not module_paths:
        raise PartError("untie(model, ...) needs at least one module path, e.g. untie(model, 'lm_head')")
    modules = dict(model.named_modules(remove_duplicate=False))
    for path in module_paths:
        if not isinstance(path, str) or not path or path not in modules:
            raise PartError(f"untie: no module at path {path!r} (give a submodule path such as 'lm_head'); "
                            f"closest: {closest(str(path), modules)}")
    report = UntieReport()
    for path in module_paths:
        for param, names in list(_names_by_tensor(model).values()):
            inside = [n for n in names if _under(n, path)]
            outside = [n for n in names if not _under(n, path)]
            if not inside or not outside:
                continue
            # the copy is nobody's frozen tensor: it gets the original's own requires_grad (fixed stays fixed)
            twin = nn.Parameter(param.detach().clone(), requires_grad=trainable_by_nature(param))
            for name in inside:
                owner, _, attr = name.rpartition(".")
                setattr(_own_module(model, owner), attr, twin)
            report.untied.append(Untied(path, tuple(inside), tuple(outside)))
    if report.untied:
        report.config_changes = _update_tie_bookkeeping(model)
    return report


def _hf_models(model: nn.Module) -> Iterable[tuple[str, Any]]:
    for prefix, sub in model.named_modules():
        if callable(getattr(sub, "get_expanded_tied_weights_keys", None)) and getattr(sub, "config", None) is not None:
            yield prefix, sub


def _update_tie_bookkeeping(model: nn.Module) -> list[str]:
    """Drop untied pairs from Hugging Face-style tie mappings; turn a config's tie flag off when none
    of its pairs is tied any more. Returns what changed, one line each."""
    changes: list[str] = []
    configs: dict[int, tuple[Any, list[bool]]] = {}
    for prefix, sub in _hf_models(model):
        try:
            mapping = dict(sub.get_expanded_tied_weights_keys(all_submodels=False))
        except (TypeError, ValueError):
            continue  # an unexpected tie-mapping format: leave it alone
        if not mapping:
            continue
        params = dict(sub.named_parameters(remove_duplicate=False))
        kept = {t: s for t, s in mapping.items() if t in params and s in params and params[t] is params[s]}
        configs.setdefault(id(sub.config), (sub.config, []))[1].append(bool(kept))
        if kept != mapping:
            sub._tied_weights_keys = kept or None  # an instance attribute: the class keeps its own
            where = f"{prefix}." if prefix else ""
            dropped = sorted(set(mapping) - set(kept))
            changes.append(f"tie mapping of {type(sub).__name__} no longer ties "
                           f"{', '.join(where + d for d in dropped)}")
    for config, any_kept in configs.values():
        if not any(any_kept) and getattr(config, "tie_word_embeddings", False):
            config.tie_word_embeddings = False
            changes.append(f"{type(config).__name__}.tie_word_embeddings: True -> False")
    hf: Any = model  # a Hugging Face PreTrainedModel, duck-typed
    if callable(getattr(hf, "get_expanded_tied_weights_keys", None)) and hasattr(hf, "all_tied_weights_keys"):
        hf.all_tied_weights_keys = hf.get_expanded_tied_weights_keys(all_submodels=True)
    return changes
