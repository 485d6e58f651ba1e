"""Per-part optimizers: one optimizer with groups per part, or one optimizer per part.

How optimizers learn about freezing — one mechanism for every caller (``Parts.freeze/unfreeze``,
``Parts.frozen``, ``pw.freeze``, the Trainer's phases):

* :func:`build_optimizer` gives every part its param groups once, for good: a part frozen at build
  time gets its groups too, holding no parameter for now. The optimizer object and its list of groups
  never change afterwards, so code holding them (``LambdaLR``, ``OneCycleLR``, an outer trainer) keeps
  working across any freeze and unfreeze.
* Freezing (see ``partwise._model._freezing``) tells every optimizer built here: a parameter leaving
  training is taken out of its group's ``params`` and its state is dropped — zero bytes kept — unless
  the freeze asked to keep it (``keep_state=True``, ``Parts.frozen``), then it is set aside and
  reported by :func:`kept_state_bytes`. Unfreezing puts the parameter back in its own group, in its
  place, with fresh state (or the kept one, with ``restore_state=True``).
* Optimizers built elsewhere are covered by a step pre-hook: a frozen parameter's gradient and state
  are dropped before every ``step()``, so it never moves.
* ``state_dict()`` of an optimizer built here is keyed by parameter *name* and records each
  parameter's shape and dtype and the optimizer class; loading checks them: state saved for a
  parameter of another shape or dtype, or by another optimizer class, is not loaded (that parameter
  starts fresh) and a warning lists each one. Groups a user adds with ``add_param_group`` keep working
  and are saved by position.
"""

from __future__ import annotations

import functools
import inspect
import math
import re
import warnings
import weakref
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer
from torch.utils.weak import WeakIdKeyDictionary

from .._errors import PartError
from .._model import _freezing as fz
from .._model._parts import Parts

__all__ = [
    "build_optimizer", "OptimizerSet", "check_optimizer", "optimizer_class", "state_bytes",
    "kept_state_bytes", "carry_state", "optimizers_of", "load_state_by_name", "reconfigure", "DEFAULT_OPTIONS",
]

DEFAULT_OPTIONS: dict[str, Any] = {"name": "adamw", "lr": 1e-3, "weight_decay": 0.01}
NAMED_FORMAT = "partwise.named-state/2"
SET_FORMAT = "partwise.optimizer-set/1"


class _Binding:
    """What partwise knows of an optimizer it built: the members of each of its groups, and names."""

    def __init__(self, members: list[list[nn.Parameter]], names: dict[int, str]):
        self.members = members
        self.names = names
        self.kept: WeakIdKeyDictionary = WeakIdKeyDictionary()  # parameter -> state set aside

    def name(self, p: torch.Tensor, group: int, index: int) -> str:
        return self.names.get(id(p)) or f"<group {group} param {index}>"

    def sync(self, opt: Optimizer, stopped: set[int], resumed: set[int], keep: bool, restore: bool) -> None:
        """Take ``stopped`` parameters out of their groups (state dropped, or set aside with ``keep``)
        and put ``resumed`` ones back in their place (fresh state, or the kept one with ``restore``)."""
        for group, members in zip(opt.param_groups, self.members, strict=False):
            current = {id(p) for p in group["params"]}
            if not (current & stopped or {id(p) for p in members} & resumed):
                continue
            for p in group["params"]:
                if id(p) in stopped:
                    st = opt.state.pop(p, None)
                    if keep and st:
                        self.kept[p] = st
            member_ids = {id(p) for p in members}
            wanted = [p for p in members if (id(p) in current and id(p) not in stopped) or id(p) in resumed]
            added = [p for p in members if id(p) in resumed and id(p) not in current]
            group["params"] = wanted + [p for p in group["params"] if id(p) not in member_ids]
            for p in added:
                st = self.kept.pop(p, None) if p in self.kept else None  # type: ignore[no-untyped-call]
                if restore and st is not None:
                    opt.state[p] = st
            fresh = [p for p in added if p not in opt.state]
            if fresh:
                _init_state(opt, group, fresh)


# optimizer built here -> its binding (the binding never refers back to the optimizer)
_BINDINGS: weakref.WeakKeyDictionary[Optimizer, _Binding] = weakref.WeakKeyDictionary()


def _on_freezing(stopped: list[nn.Parameter], resumed: list[nn.Parameter], keep: bool, restore: bool) -> None:
    off, on = {id(p) for p in stopped}, {id(p) for p in resumed}
    for opt, binding in list(_BINDINGS.items()):
        binding.sync(opt, off, on, keep, restore)


fz.subscribe(_on_freezing)


def _init_state(opt: Optimizer, group: dict[str, Any], params: list[nn.Parameter]) -> None:
    """Initial state for parameters joining a group, for optimizers that create it in ``__init__``
    (Adagrad's running sum): what a new optimizer of the same class and options would hold."""
    cls = type(opt)
    keys = _valid_keys(cls)
    probe = cls([{"params": params}], **{k: v for k, v in group.items() if k in keys})
    for p in params:
        if probe.state.get(p):
            opt.state[p] = probe.state[p]


@functools.cache
def _optimizer_classes() -> dict[str, type[Optimizer]]:
    out = {}
    for attr in torch.optim.__all__:
        obj = getattr(torch.optim, attr)
        if isinstance(obj, type) and issubclass(obj, Optimizer) and obj is not Optimizer:
            out[attr.lower()] = obj
    return out


def optimizer_class(name: str | type[Optimizer]) -> type[Optimizer]:
    """A ``torch.optim`` optimizer class from its name (any case: ``"adamw"``, ``"SGD"``) or itself.

    Examples:
        >>> optimizer_class("adamw").__name__
        'AdamW'
    """
    if isinstance(name, type) and issubclass(name, Optimizer):
        return name
    classes = _optimizer_classes()
    if isinstance(name, str) and name.lower() in classes:
        return classes[name.lower()]
    raise PartError(f"optimizer {name!r} is not a torch.optim optimizer; choose one of {', '.join(sorted(classes))}")


def _valid_keys(cls: type[Optimizer]) -> set[str]:
    return {k for k in inspect.signature(cls.__init__).parameters if k not in ("self", "params")}


def is_no_decay(name: str, p: nn.Parameter, rule: str | Iterable[str] | None) -> bool:
    """Whether parameter ``name`` takes no weight decay under ``rule`` ("auto": 1-d tensors)."""
    if rule is None:
        return False
    if rule == "auto":
        return p.ndim <= 1  # biases, norm scales and shifts, scalars
    return any(re.fullmatch(rx, name) for rx in ([rule] if isinstance(rule, str) else rule))  # one regex or several


def _option_problems(opts: Mapping[str, Any], cls: type[Optimizer]) -> list[str]:
    out = []
    bad = sorted(set(opts) - _valid_keys(cls))
    if bad:
        out.append(f"{cls.__name__} has no option(s) {bad}; valid: {sorted(_valid_keys(cls))}")
    for key in ("lr", "weight_decay", "momentum", "eps"):
        v = opts.get(key)
        if key in opts and (isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0):
            out.append(f"{key}={v!r} must be a finite number >= 0")
    return out or _dry_run(opts, cls)


def _dry_run(opts: Mapping[str, Any], cls: type[Optimizer]) -> list[str]:
    """What ``cls``'s own constructor refuses in ``opts`` (e.g. Adam's ``betas`` out of [0, 1)),
    found by building it over one throwaway tensor."""
    try:
        cls([torch.zeros(1, requires_grad=True)], **opts)
    except (ValueError, TypeError, RuntimeError) as e:
        return [" ".join(str(e).split())]
    return []


class PartConfig:
    """Resolved optimizer options of every part, validated at once (all problems in one error)."""

    def __init__(self, parts: Parts, per_part: Mapping[str, Mapping[str, Any]] | None,
                 default: Mapping[str, Any] | None, no_decay: str | Iterable[str] | None = "auto"):
        self.parts = parts
        self.no_decay: str | list[str] | None = (
            no_decay if no_decay is None or isinstance(no_decay, str) else list(no_decay))
        base = dict(DEFAULT_OPTIONS if default is None
                    else {"name": DEFAULT_OPTIONS["name"], "lr": DEFAULT_OPTIONS["lr"], **default})
        per_part = dict(per_part or {})
        errors = []
        unknown = [n for n in per_part if n not in parts]
        if unknown:
            errors.append(f"per_part names unknown part(s) {unknown}; parts are {parts.names}")
        self.options: dict[str, dict[str, Any]] = {}
        self.classes: dict[str, type[Optimizer]] = {}
        for name in parts.names:
            opts = {**base, **dict(per_part.get(name, {}))}
            try:
                cls = optimizer_class(opts.pop("name"))
            except PartError as e:
                errors.append(f"part {name!r}: {e}")
                continue
            wd_default = inspect.signature(cls.__init__).parameters.get("weight_decay")
            if wd_default is not None and "weight_decay" not in opts:
                opts["weight_decay"] = wd_default.default  # the class's own default, made explicit
            errors += [f"part {name!r}: {p}" for p in _option_problems(opts, cls)]
            self.options[name], self.classes[name] = opts, cls
        if errors:
            raise PartError(" | ".join(errors))

    def groups(self, part: str) -> list[tuple[dict[str, Any], list[nn.Parameter]]]:
        """Param groups for one part and their members: decayed and not-decayed parameters (for a
        class with a ``weight_decay`` option, whatever its value now, so a phase that turns weight
        decay on or off changes options, not groups). Members are the part's parameters that are
        trainable by nature; a group holds those that train now."""
        opts = self.options[part]
        named = [(n, p) for n, p in self.parts[part].named_parameters() if fz.trainable_by_nature(p)]
        split = "weight_decay" in _valid_keys(self.classes[part])  # whatever its value: layout never depends on it
        out = []
        for no_decay in (False, True):
            members = [p for n, p in named if (split and is_no_decay(n, p, self.no_decay)) == no_decay]
            if members:
                extra = {"weight_decay": 0.0} if no_decay else {}
                group = {**opts, **extra, "part": part, "no_decay": no_decay,
                         "params": [p for p in members if p.requires_grad]}
                out.append((group, members))
        return out


def _install_named_state(opt: Optimizer, binding: _Binding) -> None:
    """Make ``opt.state_dict()`` keyed by parameter names and ``load_state_dict`` accept that form."""

    def to_named(optimizer: Optimizer, sd: dict[str, Any]) -> dict[str, Any]:
        idx2name: dict[int, str] = {}
        shapes: dict[str, list[Any]] = {}
        for gi, (packed, group) in enumerate(zip(sd["param_groups"], optimizer.param_groups, strict=True)):
            for j, (i, p) in enumerate(zip(packed["params"], group["params"], strict=True)):
                idx2name[i] = binding.name(p, gi, j)
                shapes[idx2name[i]] = [list(p.shape), str(p.dtype)]
            packed["params"] = [idx2name[i] for i in packed["params"]]
        sd["state"] = {idx2name[i]: s for i, s in sd["state"].items()}
        sd.update(format=NAMED_FORMAT, shapes=shapes, optimizer=type(optimizer).__name__)
        return sd

    def from_named(optimizer: Optimizer, sd: dict[str, Any]) -> dict[str, Any] | None:
        if sd.get("format") != NAMED_FORMAT:
            return None
        same_class = sd.get("optimizer", type(optimizer).__name__) == type(optimizer).__name__
        if not same_class:
            warnings.warn(f"optimizer state saved by {sd.get('optimizer')} not loaded into {type(optimizer).__name__}: "
                          "every parameter starts fresh", RuntimeWarning, stacklevel=4)
        saved = {(g.get("part"), g.get("no_decay")): g for g in sd["param_groups"] if "part" in g}
        extras = [g for g in sd["param_groups"] if "part" not in g]
        good = _matching_state(optimizer, binding, sd) if same_class else {}
        groups, state, idx = [], {}, 0
        for gi, group in enumerate(optimizer.param_groups):
            src = saved.get((group.get("part"), group.get("no_decay"))) if "part" in group else (
                extras.pop(0) if extras else None)
            packed = {k: v for k, v in (src if src is not None and same_class else group).items() if k != "params"}
            packed["params"] = []
            for j, p in enumerate(group["params"]):
                name = binding.name(p, gi, j)
                if name in good:
                    state[idx] = good[name]
                packed["params"].append(idx)
                idx += 1
            groups.append(packed)
        return {"state": state, "param_groups": groups}

    opt.register_state_dict_post_hook(to_named)
    opt.register_load_state_dict_pre_hook(from_named)


def _matching_state(optimizer: Optimizer, binding: _Binding, sd: Mapping[str, Any]) -> dict[str, Any]:
    """The saved per-parameter states whose parameter has the same shape and dtype now; warn of the rest."""
    shapes = sd.get("shapes", {})
    current = {binding.name(p, gi, j): p for gi, g in enumerate(optimizer.param_groups)
               for j, p in enumerate(g["params"])}
    good, bad = {}, []
    for name, st in sd["state"].items():
        p = current.get(name)
        if p is None:
            continue
        saved = shapes.get(name)
        if saved == [list(p.shape), str(p.dtype)]:
            good[name] = st
        else:
            bad.append(f"{name} (saved {saved[0] if saved else '?'} {saved[1] if saved else ''}, now "
                       f"{list(p.shape)} {p.dtype})")
    if bad:
        warnings.warn(f"optimizer state of {len(bad)} parameter(s) not loaded, their shape or dtype changed; they "
                      f"start fresh: {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}", RuntimeWarning,
                      stacklevel=5)
    return good


class OptimizerSet:
    """One optimizer per part, driven as one: ``zero_grad``, ``step``, ``param_groups``, state dicts
    keyed by part and parameter name.

    Examples:
        >>> from torch import nn
        >>> from partwise import Parts, build_optimizer
        >>> m = nn.Sequential(); m.add_module("enc", nn.Linear(2, 2)); m.add_module("dec", nn.Linear(2, 2))
        >>> opts = build_optimizer(Parts(m), per_part={"enc": {"name": "sgd", "lr": 0.1}}, separate=True)
        >>> sorted(opts.optimizers), type(opts["enc"]).__name__
        (['dec', 'enc'], 'SGD')
    """

    def __init__(self, optimizers: Mapping[str, Optimizer]):
        self.optimizers: dict[str, Optimizer] = dict(optimizers)

    def __getitem__(self, part: str) -> Optimizer:
        return self.optimizers[part]

    def __contains__(self, part: object) -> bool:
        return part in self.optimizers

    def __iter__(self) -> Iterator[Optimizer]:
        return iter(self.optimizers.values())

    def __len__(self) -> int:
        return len(self.optimizers)

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [g for opt in self.optimizers.values() for g in opt.param_groups]

    @property
    def state(self) -> dict[Any, Any]:
        return {p: s for opt in self.optimizers.values() for p, s in opt.state.items()}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for opt in self.optimizers.values():
            opt.step()

    def state_dict(self) -> dict[str, Any]:
        return {"format": SET_FORMAT, "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()}}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load per-part states; parts absent on either side, or saved by another optimizer class,
        start fresh (a warning names the latter)."""
        if state_dict.get("format") != SET_FORMAT:
            raise PartError("not an OptimizerSet state dict (missing format 'partwise.optimizer-set/1')")
        for part, sd in state_dict["optimizers"].items():
            if part in self.optimizers:
                self.optimizers[part].load_state_dict(sd)

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={type(o).__name__}" for k, o in self.optimizers.items())
        return f"OptimizerSet({inner})"


def optimizers_of(optimizer: Optimizer | OptimizerSet) -> list[Optimizer]:
    return list(optimizer) if isinstance(optimizer, OptimizerSet) else [optimizer]


def check_optimizer(optimizer: Optimizer | OptimizerSet, parts: Parts) -> None:
    """Check by identity that every trainable parameter sits in exactly one group and no frozen
    parameter sits in any; raise :class:`~partwise.PartError` listing every offender.

    Works for optimizers you built yourself too. Also refuses a registry whose model's parameters
    were replaced since it was built.
    """
    parts.check_current()
    names = parts.name_of()
    seen: dict[int, int] = {}
    for g in optimizer.param_groups:
        for p in g["params"]:
            seen[id(p)] = seen.get(id(p), 0) + 1
    trainable = {id(p) for part in parts for p in part.parameters() if p.requires_grad}
    twice = [names.get(i, "?") for i, c in seen.items() if c > 1]
    missing = [names[i] for i in trainable if i not in seen]
    frozen = [names.get(i, "?") for i in seen if i not in trainable]
    problems = []
    for label, items in (("in two groups", twice), ("trainable but in no group", missing),
                         ("frozen but still in a group", frozen)):
        if items:
            problems.append(f"{len(items)} parameter(s) {label}: {', '.join(sorted(items)[:8])}")
    if problems:
        raise PartError("optimizer layout is wrong: " + "; ".join(problems))


def _make(cls: type[Optimizer], groups: list[tuple[dict[str, Any], list[nn.Parameter]]], ctor: dict[str, Any],
          names: dict[int, str]) -> Optimizer:
    opt = cls([g for g, _ in groups], **{k: v for k, v in ctor.items() if k in _valid_keys(cls)})
    binding = _Binding([m for _, m in groups], names)
    _install_named_state(opt, binding)
    _BINDINGS[opt] = binding
    fz.follow(opt)
    return opt


def build_optimizer(
    parts: Parts,
    per_part: Mapping[str, Mapping[str, Any]] | None = None,
    default: Mapping[str, Any] | None = None,
    separate: bool = False,
    no_decay: str | Iterable[str] | None = "auto",
) -> Optimizer | OptimizerSet:
    """Build optimizers from parts: options per part over a default; follows later freezing.

    Every part gets its groups now — a frozen part's hold no parameter until it is unfrozen — so the
    optimizer and its groups stay the same objects for the run (an LR scheduler attached to it keeps
    working). Fixed parameters (created with ``requires_grad=False``) are never included.

    Args:
        parts: the registry.
        per_part: part name -> options (``name`` of a ``torch.optim`` class, ``lr``, ``weight_decay``,
            any option of that class).
        default: options for parts not in ``per_part`` (and under those that are).
            Default ``{"name": "adamw", "lr": 1e-3, "weight_decay": 0.01}``.
        separate: ``False``: one optimizer, one param group per part (two when part of it takes no
            weight decay), each group carrying ``group["part"]``. ``True``: an :class:`OptimizerSet`
            with one optimizer per part, each possibly of a different class.
        no_decay: which parameters get no weight decay: ``"auto"`` (1-d tensors: biases and norm
            weights), a list of regexes over parameter names, or ``None`` (decay everything).

    Examples:
        >>> from torch import nn
        >>> from partwise import Parts
        >>> m = nn.Sequential(); m.add_module("encoder", nn.Linear(2, 2)); m.add_module("decoder", nn.Linear(2, 2))
        >>> opt = build_optimizer(Parts(m), per_part={"encoder": {"lr": 1e-5}})
        >>> [(g["part"], g["lr"], g["weight_decay"]) for g in opt.param_groups]
        [('encoder', 1e-05, 0.01), ('encoder', 1e-05, 0.0), ('decoder', 0.001, 0.01), ('decoder', 0.001, 0.0)]
    """
    parts.check_current()
    config = PartConfig(parts, per_part, default, no_decay)
    names = parts.name_of()
    by_part = {n: config.groups(n) for n in parts.names}
    by_part = {n: g for n, g in by_part.items() if g}
    if not any(grp["params"] for gs in by_part.values() for grp, _ in gs):
        raise PartError(f"nothing to optimize: every part is frozen or has no trainable parameter ({parts.names})")
    ctor = {k: v for k, v in {**DEFAULT_OPTIONS, **(default or {})}.items() if k != "name"}
    result: Optimizer | OptimizerSet
    if separate:
        result = OptimizerSet({n: _make(config.classes[n], gs, config.options[n], names) for n, gs in by_part.items()})
    else:
        live = [n for n, gs in by_part.items() if any(g["params"] for g, _ in gs)]
        classes = {config.classes[n] for n in live}
        if len(classes) > 1:
            listing = ", ".join(f"{n}={config.classes[n].__name__}" for n in live)
            raise PartError(f"one optimizer cannot mix classes ({listing}); pass separate=True")
        cls = classes.pop()
        left_out = [n for n in by_part if config.classes[n] is not cls]
        if left_out:
            warnings.warn(f"frozen part(s) {left_out} ask for another optimizer class than {cls.__name__} and are left "
                          "out of this optimizer; build it with separate=True to train them later", stacklevel=2)
        result = _make(cls, [g for n, gs in by_part.items() if n not in left_out for g in gs], ctor, names)
    check_optimizer(result, parts)
    return result


def reconfigure(optimizer: Optimizer | OptimizerSet, parts: Parts, per_part: Mapping[str, Mapping[str, Any]],
                default: Mapping[str, Any] | None = None) -> bool:
    """Set each part's group options in place (``lr``, ``weight_decay``, ``betas`` ...) from
    ``per_part`` over ``default``; an option not given goes back to the class's default (a phase that
    drops ``momentum`` gets none). State and groups stay; a group of parameters that take no weight
    decay keeps ``weight_decay=0``. Returns ``False``, changing nothing, when a part needs another
    optimizer class (build a new optimizer).
    """
    config = PartConfig(parts, per_part, default)
    plan = []
    for opt in optimizers_of(optimizer):
        if opt not in _BINDINGS:
            raise PartError("reconfigure() needs an optimizer built by build_optimizer")
        ours = [g for g in opt.param_groups if g.get("part") is not None]
        if any(config.classes[g["part"]] is not type(opt) for g in ours):
            return False
        wanted = {(g["part"], g["no_decay"]) for part in {g["part"] for g in ours} for g, _ in config.groups(part)}
        if {(g["part"], g["no_decay"]) for g in ours} != wanted:
            return False
        defaults = _signature_defaults(type(opt))
        plan += [(g, {**defaults, **config.options[g["part"]]}) for g in ours]
    for g, opts in plan:
        g.update(opts)
        if g.get("no_decay"):
            g["weight_decay"] = 0.0
    return True


def _signature_defaults(cls: type[Optimizer]) -> dict[str, Any]:
    """The hyperparameters a ``cls`` group gets when an option is not given (``lr`` excepted)."""
    params = inspect.signature(cls.__init__).parameters
    return {k: v.default for k, v in params.items()
            if k not in ("self", "params", "lr") and v.default is not inspect.Parameter.empty}


def state_bytes(optimizer: Optimizer | OptimizerSet, parts: Parts) -> dict[str, int]:
    """Bytes of optimizer state held per part (frozen parts hold zero)."""
    owner = parts.part_of()
    out = dict.fromkeys(parts.names, 0)
    for p, st in optimizer.state.items():
        out[owner[id(p)]] += _nbytes(st)
    return out


def kept_state_bytes(optimizer: Optimizer | OptimizerSet, parts: Parts) -> dict[str, int]:
    """Bytes of optimizer state set aside per part by ``freeze(keep_state=True)`` / ``Parts.frozen``
    (zero after a plain freeze)."""
    owner = parts.part_of()
    out = dict.fromkeys(parts.names, 0)
    for opt in optimizers_of(optimizer):
        binding = _BINDINGS.get(opt)
        for p, st in (binding.kept.items() if binding else []):  # type: ignore[no-untyped-call]
            if id(p) in owner:
                out[owner[id(p)]] += _nbytes(st)
    return out


def _nbytes(state: Mapping[str, Any]) -> int:
    return sum(v.numel() * v.element_size() for v in state.values() if isinstance(v, torch.Tensor))


def carry_state(old: Optimizer | OptimizerSet, new: Optimizer | OptimizerSet) -> int:
    """Carry optimizer state from ``old`` to ``new`` for every parameter both hold (by identity) in
    optimizers of the same class — state of another class means something else and is not carried;
    hyperparameters stay those of ``new``. Returns the number of parameters carried."""
    old_state = {id(p): (type(o), s) for o in optimizers_of(old) for p, s in o.state.items()}
    carried = 0
    for o in optimizers_of(new):
        for g in o.param_groups:
            for p in g["params"]:
                cls, st = old_state.get(id(p), (None, None))
                if cls is type(o):
                    o.state[p] = st
                    carried += 1
    return carried


def _state_tensor(v: torch.Tensor, p: torch.Tensor, key: str) -> torch.Tensor:
    """Saved optimizer state ``v`` of parameter ``p`` on its device and dtype (a step count keeps
    its own); a whole tensor saved for a sharded (``DTensor``) parameter takes its sharding."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    v = v.to(p.device, p.dtype if v.is_floating_point() and key != "step" else v.dtype).clone()
    if isinstance(p, DTensor) and not isinstance(v, DTensor) and tuple(v.shape) == tuple(p.shape):
        return distribute_tensor(v, p.device_mesh, p.placements)
    return v


def load_state_by_name(optimizer: Optimizer | OptimizerSet, state_dict: Mapping[str, Any]) -> int:
    """Load only the per-parameter state of a name-keyed state dict (``optimizer.state_dict()`` of an
    optimizer partwise built, or of an :class:`OptimizerSet`) into ``optimizer``, matching by
    parameter name; group hyperparameters are left as they are. State saved by another optimizer
    class, or for a parameter whose shape or dtype changed, is skipped with a warning (that
    parameter starts fresh). Returns the parameters loaded."""
    if state_dict.get("format") == SET_FORMAT:
        saved = list(state_dict["optimizers"].values())
    elif state_dict.get("format") == NAMED_FORMAT:
        saved = [state_dict]
    else:
        raise PartError("optimizer state is not keyed by parameter name (build the optimizer with build_optimizer, "
                        f"partwise format {NAMED_FORMAT!r})")
    loaded = 0
    for o in optimizers_of(optimizer):
        binding = _BINDINGS.get(o)
        if binding is None:
            raise PartError("load_state_by_name() needs an optimizer built by build_optimizer")
        cls = type(o).__name__
        same = [sd for sd in saved if sd.get("optimizer", cls) == cls]
        other = [sd.get("optimizer") for sd in saved if sd.get("optimizer", cls) != cls and sd["state"]]
        merged = {n: s for sd in same for n, s in _matching_state(o, binding, sd).items()}
        mine = {binding.name(p, gi, j) for gi, g in enumerate(o.param_groups) for j, p in enumerate(g["params"])}
        if other and not merged and mine & {n for sd in saved for n in sd["state"]}:
            warnings.warn(f"optimizer state saved by {sorted(set(other))} not loaded into {type(o).__name__}: those "
                          "parameters start fresh", RuntimeWarning, stacklevel=2)
        for gi, g in enumerate(o.param_groups):
            for j, p in enumerate(g["params"]):
                st = merged.get(binding.name(p, gi, j))
                if st is None:
                    continue
                o.state[p] = {k: _state_tensor(v, p, k) if isinstance(v, torch.Tensor) else v for k, v in st.items()}
                loaded += 1
    return loaded
