"""FSDP2 with parts: each part its own sharded unit, phases in lockstep, sharded checkpoints.

:func:`shard` applies ``torch.distributed.fsdp.fully_shard`` to a model part by part (a unit per
part, units of your own inside a part first, modules holding one tied tensor kept in one unit), then
to the root, and returns the registry rebuilt on the sharded parameters (FSDP2 replaces every
parameter by a ``DTensor`` of the same name; a registry built before would look at tensors the model
no longer uses). What FSDP2 then does with frozen parts: a parameter without ``requires_grad`` gets
no gradient, so it is never reduce-scattered and has no optimizer state; freezing and unfreezing
only flip ``requires_grad`` between steps, while every unit is resharded, and every rank flips alike
because each follows the same plan at the same step.

The checkpoint helpers keep partwise's format: :func:`full_part_tensors` gathers the whole weights
to rank 0 (per part, on the CPU, one tensor at a time) for the per-part safetensors that
``load_part``, ``eval``, ``predict`` and ``export`` read; :func:`sharded_tensors` /
:func:`load_sharded` save and restore every rank's shards of weights and optimizer state with
``torch.distributed.checkpoint`` (keyed by parameter name, so a frozen part's optimizer state is
kept as it is, never dropped or invented).
"""

from __future__ import annotations

import contextlib
import fnmatch
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as tdist
from torch import nn

from .._errors import ConfigError
from .._model._parts import REST, Parts

__all__ = ["shard", "plan_units", "is_sharded", "has_placeholders", "gathered", "full_part_tensors", "sharded_tensors",
           "load_sharded", "save_shards", "load_full", "SHARDS", "local"]

SHARDS = "shards"  #: the folder inside a checkpoint that holds every rank's shards (torch.distributed.checkpoint)
_MARK = "__partwise_sharded__"  # a placeholder in state.pt for a tensor kept in the shards


def is_sharded(model: nn.Module) -> bool:
    """Whether ``fully_shard`` was applied to ``model`` (its root)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a ``DTensor`` (a plain tensor as it is)."""
    from torch.distributed.tensor import DTensor

    return t.to_local() if isinstance(t, DTensor) else t


def _top(paths: Sequence[str]) -> list[str]:
    """The paths no other path of ``paths`` contains."""
    return [p for p in paths if not any(q != p and (q == "" or p.startswith(q + ".")) for q in paths)]


def plan_units(model: nn.Module, parts: Parts, units: Sequence[str] = ()) -> list[list[str]]:
    """The FSDP units :func:`shard` makes, in the order it makes them, as lists of module paths (the
    root, applied last, holds whatever no unit does): each module matching a pattern of ``units``
    (e.g. ``"encoder.layers.*"``); the modules holding one tied tensor, as one unit; then a unit per
    part, of the top modules the part owns. A tied tensor that one of ``units`` would split from its
    other holders is refused (:class:`~partwise.ConfigError`): FSDP2 shards a tensor in one unit only.

    Examples:
        >>> from torch import nn
        >>> import partwise as pw
        >>> m = nn.Module(); m.encoder = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)); m.decoder = nn.Linear(2, 2)
        >>> plan_units(m, pw.Parts(m), units=["encoder.*"])
        [['encoder.0'], ['encoder.1'], ['encoder'], ['decoder']]
    """
    modules = dict(model.named_modules(remove_duplicate=False))
    errors = [f"fsdp units: pattern {u!r} matches no module; module paths look like {list(modules)[1:4]}"
              for u in units if not any(fnmatch.fnmatchcase(p, u) for p in modules)]
    if errors:
        raise ConfigError(errors)
    own = [[p] for p in _top([p for p in modules if p and any(fnmatch.fnmatchcase(p, u) for u in units)])]
    holders: dict[int, list[str]] = {}
    for path, m in modules.items():
        for t in m.parameters(recurse=False):
            if path not in holders.setdefault(id(t), []):
                holders[id(t)].append(path)
    names = {id(p): n for n, p in model.named_parameters()}
    tied: list[list[str]] = []
    split = []
    for key, paths in holders.items():
        if len({id(modules[p]) for p in paths}) < 2:
            continue
        mine = {_unit_of(p, own) for p in paths}
        if mine != {-1} and len(mine) > 1:
            split.append(f"fsdp: tied tensor {names.get(key, '?')!r} is held by {', '.join(paths)}, which 'units' puts "
                         "in different FSDP units; FSDP2 shards a tensor in one unit only: keep its holders in one "
                         "unit (or out of 'units'), or untie the weights (partwise.untie)")
        elif mine == {-1}:
            joined = [u for u in tied if set(u) & set(paths)]
            tied = [u for u in tied if not set(u) & set(paths)] + [list(dict.fromkeys([*sum(joined, []), *paths]))]
    if split:
        raise ConfigError(split)
    in_tied = {p for u in [*tied, *own] for p in u}  # modules that are units already
    path_of = {id(m): p for p, m in model.named_modules()}
    by_part = []
    for part in parts:
        if part.name == REST:
            continue
        tops = _runnable(_top([path_of[id(m)] for _, m in part.named_modules() if id(m) in path_of]), modules)
        tops = [p for p in tops if p and p not in in_tied and any(True for _ in modules[p].parameters())]
        if tops:
            by_part.append(tops)
    return sorted(own, key=lambda u: -u[0].count(".")) + tied + by_part


def _runnable(paths: list[str], modules: Mapping[str, nn.Module]) -> list[str]:
    """``paths`` with each container that never runs a forward of its own (``ModuleList``,
    ``ModuleDict``) replaced by its children: FSDP2 gathers a unit when one of its modules runs."""
    out = []
    for p in paths:
        m = modules[p]
        if isinstance(m, nn.ModuleList | nn.ModuleDict):
            out += _runnable([f"{p}.{n}" for n, _ in m.named_children()], modules)
        else:
            out.append(p)
    return out


def _unit_of(path: str, units: Sequence[Sequence[str]]) -> int:
    """Index of the innermost unit whose module contains ``path`` (-1: none)."""
    best, depth = -1, -1
    for i, unit in enumerate(units):
        for q in unit:
            if (q == path or path.startswith(q + ".")) and q.count(".") > depth:
                best, depth = i, q.count(".")
    return best


def shard(model: nn.Module, parts: Parts, units: Sequence[str] = (), mesh: Any = None,
          reshard_after_forward: bool = True, root: nn.Module | None = None) -> Parts:
    """Shard ``model`` with FSDP2 (see :func:`plan_units`) and return its registry rebuilt on the
    sharded parameters, frozen as ``parts`` was. Needs a started process group (``torchrun``).

    ``root``: the module whose forward runs each step, sharded last as FSDP2's root (default
    ``model``). FSDP2 takes the first sharded module to run a forward as its root; when the loss
    calls ``model.encoder`` and ``model.decoder`` rather than ``model(...)``, give a module that
    holds ``model`` and computes the loss (the Trainer does).

    Examples:
        >>> # under torchrun, with a process group started:
        >>> # parts = pw.shard(model, pw.Parts(model), units=["encoder.layers.*"])
    """
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    if not (tdist.is_available() and tdist.is_initialized()):
        raise ConfigError(["distributed: 'fsdp2' needs a process group: start the run with torchrun"])
    planned = plan_units(model, parts, units)
    frozen = parts.state_dict()
    spec = {p.name: list(p.selectors) for p in parts if p.name != REST}
    parts.load_state_dict({"frozen": {}})  # release the old registry's holds: the new one takes them over
    modules = dict(model.named_modules(remove_duplicate=False))
    for unit in planned:
        targets = list({id(modules[p]): modules[p] for p in unit}.values())
        fully_shard(targets if len(targets) > 1 else targets[0], mesh=mesh,
                    reshard_after_forward=reshard_after_forward)
    top = root if root is not None else model
    fully_shard(top, mesh=mesh, reshard_after_forward=reshard_after_forward)
    # FSDP2 makes the first sharded module to run a forward its root; a unit run on its own first (the
    # encoder cache, rank 0's evaluation) would take that place, so the root is initialised now, as its
    # first forward would (torch 2.13's FSDPState._lazy_init: no public call does it)
    top._get_fsdp_state()._lazy_init()  # type: ignore[operator]
    plain = [n for n, p in model.named_parameters() if not isinstance(p, DTensor)]
    if plain:  # unreachable with fully_shard on the root: every parameter is in a unit
        raise ConfigError([f"fsdp: parameters left unsharded: {plain[:5]}"])
    new = Parts(model, spec or None)
    new.load_state_dict(frozen)
    return new


def _fsdp_modules(model: nn.Module) -> list[Any]:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


@contextlib.contextmanager
def gathered(model: nn.Module) -> Iterator[None]:
    """Every unit of a sharded ``model`` (FSDP2's root) all-gathered and kept whole inside the block
    (entered and left on every rank together, between steps), so one rank alone may run it, e.g. rank
    0's evaluation. On the way out the root's per-iteration state is reset, so the order of the
    forwards run inside (which backward prefetching follows) is not carried into the next step.
    An unsharded model is left as it is."""
    units = _fsdp_modules(model)
    if not units:
        yield
        return
    for m in units:
        m.set_reshard_after_forward(False, recurse=False)
        m.unshard()
    try:
        yield
    finally:
        for m in units:
            m.reshard()
            m.set_reshard_after_forward(True, recurse=False)
        if units[0] is model:  # forget the forwards run inside (one rank's only): FSDP2 would prefetch by them
            units[0].reset_iter_state()  # type: ignore[operator]  # torch 2.13 FSDPModule API, untyped here


def _part_keys(model: nn.Module, parts: Parts) -> dict[str, str]:
    """state-dict key -> part, a tied tensor under its first name only (what a checkpoint holds)."""
    from .._run._checkpoint import part_tensors

    return {k: part for part, tensors in part_tensors(model, parts).items() for k in tensors}


def full_part_tensors(model: nn.Module, parts: Parts, only: Sequence[str] | None = None
                      ) -> dict[str, dict[str, torch.Tensor]]:
    """The sharded model's whole weights by part, on rank 0's CPU (``{}`` on the other ranks;
    every rank must call it). ``only``: these parts."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    full: Mapping[str, Any] = get_model_state_dict(model, options=options)
    if tdist.get_rank() != 0:
        return {}
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key, part in _part_keys(model, parts).items():
        if (only is None or part in only) and key in full:
            out.setdefault(part, {})[key] = full[key]
    return out


def sharded_tensors(model: nn.Module, parts: Parts, optimizer_state: Any, only: Sequence[str] | None = None
                    ) -> tuple[dict[str, Any], Any]:
    """``(shards, state)``: this rank's shards of the weights (``model.<key>``) and of the optimizer
    state (``optim.<path>``) for ``torch.distributed.checkpoint``, and ``optimizer_state`` with each
    sharded tensor replaced by a placeholder naming it (what ``state.pt`` keeps). ``only``: these
    parts' weights."""
    from torch.distributed.tensor import DTensor

    keys = _part_keys(model, parts)
    sd = model.state_dict()
    shards: dict[str, Any] = {f"model.{k}": v for k, v in sd.items() if k in keys and (only is None or keys[k] in only)
              and isinstance(v, DTensor)}

    def strip(obj: Any, path: str) -> Any:
        if isinstance(obj, DTensor):
            shards[f"optim.{path}"] = obj
            return {_MARK: f"optim.{path}"}
        if isinstance(obj, dict):
            return {k: strip(v, f"{path}.{k}") for k, v in obj.items()}
        if isinstance(obj, list):
            return [strip(v, f"{path}.{i}") for i, v in enumerate(obj)]
        return obj

    return shards, strip(optimizer_state, "state")


def load_sharded(model: nn.Module, folder: Path, optimizer_state: Any, weights: bool = True) -> Any:
    """Read every shard of ``folder`` (written from :func:`sharded_tensors`) into the model's
    weights, in place (``weights=False``: not), and return ``optimizer_state`` with its placeholders
    filled: each optimizer tensor takes the layout of the parameter of the same name, its shard
    under FSDP2, the whole tensor in a model that is not sharded (one process, DDP). Every rank must
    call it."""
    from torch.distributed.checkpoint.filesystem import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata
    from torch.distributed.checkpoint.state_dict_loader import load

    sd = model.state_dict()
    params = dict(model.named_parameters())
    stored = {k: m for k, m in FileSystemReader(str(folder)).read_metadata().state_dict_metadata.items()
              if isinstance(m, TensorStorageMetadata)}
    target: dict[str, Any] = {k: sd[k[len("model."):]] for k in stored if weights and k.startswith("model.")
                              and k[len("model."):] in sd}

    def templates(obj: Any, param: str | None) -> None:
        if isinstance(obj, dict) and _MARK in obj:
            key = obj[_MARK]
            md, p = stored[key], params.get(param or "")
            if p is not None and tuple(md.size) == tuple(p.shape):  # shaped like its parameter: its sharding
                target[key] = torch.zeros_like(p, dtype=md.properties.dtype)
            else:
                target[key] = torch.zeros(tuple(md.size), dtype=md.properties.dtype)
        elif isinstance(obj, dict):
            for k, v in obj.items():
                templates(v, k if k in params else param)
        elif isinstance(obj, list):
            for v in obj:
                templates(v, param)

    templates(optimizer_state, None)
    load(target, checkpoint_id=str(folder), no_dist=not (tdist.is_available() and tdist.is_initialized()))
    model.load_state_dict({k: v for k, v in sd.items() if k in {t[len("model."):] for t in target}}, strict=False)

    def fill(obj: Any) -> Any:
        if isinstance(obj, dict) and _MARK in obj:
            return target[obj[_MARK]]
        if isinstance(obj, dict):
            return {k: fill(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [fill(v) for v in obj]
        return obj

    return fill(optimizer_state)


def save_shards(shards: dict[str, Any], folder: Path) -> None:
    """Write every rank's ``shards`` (from :func:`sharded_tensors`) into ``folder``; every rank calls it."""
    from torch.distributed.checkpoint.state_dict_saver import save

    folder.mkdir(parents=True, exist_ok=True)
    save(shards, checkpoint_id=str(folder))


def load_full(model: nn.Module, tensors: Mapping[str, torch.Tensor]) -> None:
    """Copy whole tensors (the same on every rank: e.g. read from per-part safetensors) into the
    sharded ``model``'s shards of them. Every rank must call it."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    from .._run._checkpoint import mismatch_error

    sd = model.state_dict()
    problems = [f"{k}: shape {tuple(tensors[k].shape)} in the checkpoint, {tuple(t.shape)} in the model"
                for k, t in sd.items() if k in tensors and tuple(tensors[k].shape) != tuple(t.shape)]
    problems += [f"{k} is missing from the checkpoint" for k in _needed(model, sd) if k not in tensors]
    if problems:
        raise mismatch_error("checkpoint does not fit this sharded model", problems,
                             "load it into the model it was saved from")
    with torch.no_grad():
        for key, full in tensors.items():
            t = sd.get(key)
            if isinstance(t, DTensor):
                t.to_local().copy_(distribute_tensor(full.to(t.dtype), t.device_mesh, t.placements).to_local())
            elif t is not None:
                t.copy_(full)


def _needed(model: nn.Module, sd: Mapping[str, torch.Tensor]) -> list[str]:
    """The state-dict keys a whole checkpoint holds (a tied tensor under one of its names)."""
    seen: set[int] = set()
    out = []
    for k, t in model.state_dict(keep_vars=True).items():
        if isinstance(t, torch.Tensor) and id(t) not in seen and k in sd:
            seen.add(id(t))
            out.append(k)
    return out


def has_placeholders(obj: Any) -> bool:
    """Whether ``obj`` (a checkpoint's optimizer state) names tensors kept in the shards."""
    if isinstance(obj, dict):
        return _MARK in obj or any(has_placeholders(v) for v in obj.values())
    if isinstance(obj, list):
        return any(has_placeholders(v) for v in obj)
    return False
