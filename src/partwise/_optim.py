"""Per-part optimizers: one optimizer with a group per part, or one optimizer per part.

Optimizers built here follow their :class:`~partwise.Parts`: freezing a part removes its parameters
and their state, unfreezing adds them back. Their ``state_dict()`` is keyed by parameter *name* (and
part), so it loads into an optimizer rebuilt after a freeze, an unfreeze or a model rebuild.
"""

from __future__ import annotations

import functools
import inspect
import re
import weakref
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from ._errors import PartError
from ._parts import Parts

__all__ = [
    "build_optimizer", "OptimizerSet", "check_optimizer", "optimizer_class", "state_bytes",
    "carry_state", "load_state_by_name",
]

DEFAULT_OPTIONS: dict[str, Any] = {"name": "adamw", "lr": 1e-3, "weight_decay": 0.01}
NAMED_FORMAT = "partwise.named-state/1"
# optimizer built here -> id(parameter) -> parameter name
_NAMES: weakref.WeakKeyDictionary[Optimizer, dict[int, str]] = weakref.WeakKeyDictionary()
SET_FORMAT = "partwise.optimizer-set/1"


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


def _is_no_decay(name: str, p: nn.Parameter, rule: str | Iterable[str] | None) -> bool:
    if rule is None or rule is False:
        return False
    if rule == "auto":
        return p.ndim <= 1  # biases, norm scales and shifts, scalars
    return any(re.fullmatch(rx, name) for rx in rule)  # type: ignore[union-attr]


class _PartConfig:
    """Resolved options of every part, validated at once."""

    def __init__(self, parts: Parts, per_part: Mapping[str, Mapping[str, Any]] | None,
                 default: Mapping[str, Any] | None, no_decay: str | Iterable[str] | None):
        self.parts = parts
        self.no_decay = list(no_decay) if no_decay not in (None, "auto") and not isinstance(no_decay, str) else no_decay
        base = dict(DEFAULT_OPTIONS if default is None else {"name": "adamw", "lr": 1e-3, **default})
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
            bad = sorted(set(opts) - _valid_keys(cls))
            if bad:
                errors.append(f"part {name!r}: {cls.__name__} has no option(s) {bad}; valid: {sorted(_valid_keys(cls))}")
            self.options[name], self.classes[name] = opts, cls
        if errors:
            raise PartError(" | ".join(errors))

    def groups(self, part: str) -> list[dict[str, Any]]:
        """Param groups for one part: decayed and (when weight decay is on) not-decayed parameters."""
        opts = self.options[part]
        named = [(n, p) for n, p in self.parts[part].named_parameters.items() if p.requires_grad]
        decay_on = float(opts.get("weight_decay", 0.0) or 0.0) != 0.0
        plain = [p for n, p in named if not (decay_on and _is_no_decay(n, p, self.no_decay))]
        nodecay = [p for n, p in named if decay_on and _is_no_decay(n, p, self.no_decay)]
        out = []
        if plain:
            out.append({"params": plain, "part": part, "no_decay": False, **opts})
        if nodecay:
            out.append({"params": nodecay, "part": part, "no_decay": True, **opts, "weight_decay": 0.0})
        return out


def _install_named_state(opt: Optimizer, names: dict[int, str]) -> None:
    """Make ``opt.state_dict()`` keyed by parameter names and ``load_state_dict`` accept that form."""

    def to_named(optimizer: Optimizer, sd: dict[str, Any]) -> dict[str, Any]:
        idx2name: dict[int, str] = {}
        for packed, group in zip(sd["param_groups"], optimizer.param_groups, strict=True):
            for i, p in zip(packed["params"], group["params"], strict=True):
                idx2name[i] = names[id(p)]
            packed["params"] = [idx2name[i] for i in packed["params"]]
        sd["state"] = {idx2name[i]: s for i, s in sd["state"].items()}
        sd["format"] = NAMED_FORMAT
        return sd

    def from_named(optimizer: Optimizer, sd: dict[str, Any]) -> dict[str, Any] | None:
        if sd.get("format") != NAMED_FORMAT:
            return None
        saved = {(g.get("part"), g.get("no_decay")): g for g in sd["param_groups"]}
        groups, state, idx = [], {}, 0
        for group in optimizer.param_groups:
            src = saved.get((group.get("part"), group.get("no_decay")), group)
            packed = {k: v for k, v in src.items() if k != "params"}
            packed["params"] = []
            for p in group["params"]:
                if names[id(p)] in sd["state"]:
                    state[idx] = sd["state"][names[id(p)]]
                packed["params"].append(idx)
                idx += 1
            groups.append(packed)
        return {"state": state, "param_groups": groups}

    opt.register_state_dict_post_hook(to_named)
    opt.register_load_state_dict_pre_hook(from_named)
    _NAMES[opt] = names


def _deref(ref: weakref.ReferenceType[Any]) -> Any:
    obj = ref()
    if obj is None:  # bindings are only called while alive (Parts drops dead ones first)
        raise RuntimeError("partwise internal error: an optimizer binding outlived its optimizer")
    return obj


class _GroupBinding:
    """Keeps one optimizer (a group per part) in step with its parts' freezing."""

    def __init__(self, opt: Optimizer, config: _PartConfig):
        self._opt = weakref.ref(opt)
        self.config = config

    @property
    def alive(self) -> bool:
        return self._opt() is not None

    def detach_part(self, part: str) -> list[tuple[int, dict[str, Any], list[Any]]]:
        opt = _deref(self._opt)
        stash = []
        for i in reversed(range(len(opt.param_groups))):
            group = opt.param_groups[i]
            if group.get("part") == part:
                states = [opt.state.pop(p, None) for p in group["params"]]
                stash.append((i, group, states))
                del opt.param_groups[i]
        return stash[::-1]

    def attach_part(self, part: str, stash: list[tuple[int, dict[str, Any], list[Any]]] | None) -> None:
        opt = _deref(self._opt)
        if any(g.get("part") == part for g in opt.param_groups):
            return
        if stash:
            for i, group, states in stash:
                opt.param_groups.insert(min(i, len(opt.param_groups)), group)
                for p, st in zip(group["params"], states, strict=True):
                    if st is not None:
                        opt.state[p] = st
        else:
            for group in self.config.groups(part):
                opt.add_param_group(group)


class OptimizerSet:
    """One optimizer per part, driven as one: ``zero_grad``, ``step``, ``param_groups``, state dicts
    keyed by part and parameter name.

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
        """Load per-part states; parts absent on either side are skipped (they start fresh)."""
        if state_dict.get("format") != SET_FORMAT:
            raise PartError("not an OptimizerSet state dict (missing format 'partwise.optimizer-set/1')")
        for part, sd in state_dict["optimizers"].items():
            if part in self.optimizers:
                self.optimizers[part].load_state_dict(sd)

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={type(o).__name__}" for k, o in self.optimizers.items())
        return f"OptimizerSet({inner})"


class _SetBinding:
    def __init__(self, opts: OptimizerSet, config: _PartConfig, names: dict[int, str]):
        self._set = weakref.ref(opts)
        self.config, self.names = config, names

    @property
    def alive(self) -> bool:
        return self._set() is not None

    def make(self, part: str) -> Optimizer | None:
        groups = self.config.groups(part)
        if not groups:
            return None
        opts = self.config.options[part]
        opt = self.config.classes[part](groups, **opts)
        _install_named_state(opt, self.names)
        return opt

    def detach_part(self, part: str) -> Optimizer | None:
        s = _deref(self._set)
        return s.optimizers.pop(part, None)

    def attach_part(self, part: str, stash: Optimizer | None) -> None:
        s = _deref(self._set)
        if part in s.optimizers:
            return
        opt = stash if stash is not None else self.make(part)
        if opt is not None:
            s.optimizers = {k: (opt if k == part else s.optimizers[k]) for k in self.config.parts.names
                            if k == part or k in s.optimizers}


def check_optimizer(optimizer: Optimizer | OptimizerSet, parts: Parts) -> None:
    """Check by identity that every trainable parameter sits in exactly one group and no frozen
    parameter sits in any; raise :class:`~partwise.PartError` listing every offender.

    Works for optimizers you built yourself too.
    """
    names = parts.name_of()
    seen: dict[int, int] = {}
    for g in optimizer.param_groups:
        for p in g["params"]:
            seen[id(p)] = seen.get(id(p), 0) + 1
    trainable = {id(p) for part in parts for p in part.parameters if p.requires_grad}
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


def build_optimizer(
    parts: Parts,
    per_part: Mapping[str, Mapping[str, Any]] | None = None,
    default: Mapping[str, Any] | None = None,
    separate: bool = False,
    no_decay: str | Iterable[str] | None = "auto",
) -> Optimizer | OptimizerSet:
    """Build optimizers from parts: options per part over a default, frozen parts left out.

    Args:
        parts: the registry; the optimizer follows its later ``freeze``/``unfreeze`` calls.
        per_part: part name -> options (``name`` of a ``torch.optim`` class, ``lr``, ``weight_decay``,
            any option of that class).
        default: options for parts not in ``per_part`` (and under those that are).
            Default ``{"name": "adamw", "lr": 1e-3, "weight_decay": 0.01}``.
        separate: ``False``: one optimizer, one param group per part (two when part of it takes no
            weight decay), each group carrying ``group["part"]``. ``True``: an :class:`OptimizerSet`
            with one optimizer per part, each possibly of a different class.
        no_decay: which parameters get no weight decay: ``"auto"`` (1-d tensors: biases and norm
            weights), a list of regexes over parameter names, or ``None`` (decay everything).

    >>> from torch import nn
    >>> from partwise import Parts
    >>> m = nn.Sequential(); m.add_module("encoder", nn.Linear(2, 2)); m.add_module("decoder", nn.Linear(2, 2))
    >>> opt = build_optimizer(Parts(m), per_part={"encoder": {"lr": 1e-5}})
    >>> [(g["part"], g["lr"], g["weight_decay"]) for g in opt.param_groups]
    [('encoder', 1e-05, 0.01), ('encoder', 1e-05, 0.0), ('decoder', 0.001, 0.01), ('decoder', 0.001, 0.0)]
    """
    config = _PartConfig(parts, per_part, default, no_decay)
    names = parts.name_of()
    trainable = [n for n in parts.trainable_names if config.groups(n)]
    if not trainable:
        raise PartError(f"nothing to optimize: every part is frozen or has no trainable parameter ({parts.names})")
    result: Optimizer | OptimizerSet
    if separate:
        result = OptimizerSet({})
        binding = _SetBinding(result, config, names)
        for n in trainable:
            made = binding.make(n)
            if made is not None:
                result.optimizers[n] = made
        parts._bind(binding)
    else:
        classes = {config.classes[n] for n in trainable}
        if len(classes) > 1:
            listing = ", ".join(f"{n}={config.classes[n].__name__}" for n in trainable)
            raise PartError(f"one optimizer cannot mix classes ({listing}); pass separate=True")
        cls = classes.pop()
        ctor = {k: v for k, v in {**DEFAULT_OPTIONS, **(default or {})}.items() if k != "name" and k in _valid_keys(cls)}
        groups = [g for n in trainable for g in config.groups(n)]
        result = cls(groups, **ctor)
        _install_named_state(result, names)
        parts._bind(_GroupBinding(result, config))
    check_optimizer(result, parts)
    return result


def state_bytes(optimizer: Optimizer | OptimizerSet, parts: Parts) -> dict[str, int]:
    """Bytes of optimizer state held per part (frozen parts should hold zero)."""
    owner = parts.part_of()
    out = dict.fromkeys(parts.names, 0)
    for p, st in optimizer.state.items():
        for v in st.values():
            if isinstance(v, torch.Tensor):
                out[owner[id(p)]] += v.numel() * v.element_size()
    return out


def _optimizers_of(optimizer: Optimizer | OptimizerSet) -> list[Optimizer]:
    return list(optimizer) if isinstance(optimizer, OptimizerSet) else [optimizer]


def carry_state(old: Optimizer | OptimizerSet, new: Optimizer | OptimizerSet) -> int:
    """Carry optimizer state from ``old`` to ``new`` for every parameter both hold (by identity);
    hyperparameters stay those of ``new``. Returns the number of parameters carried."""
    old_state = {id(p): s for o in _optimizers_of(old) for p, s in o.state.items()}
    carried = 0
    for o in _optimizers_of(new):
        for g in o.param_groups:
            for p in g["params"]:
                if id(p) in old_state:
                    o.state[p] = old_state[id(p)]
                    carried += 1
    return carried


def load_state_by_name(optimizer: Optimizer | OptimizerSet, state_dict: Mapping[str, Any]) -> int:
    """Load only the per-parameter state of a name-keyed state dict (``optimizer.state_dict()`` of an
    optimizer partwise built, or of an :class:`OptimizerSet`) into ``optimizer``, matching by
    parameter name; group hyperparameters are left as they are. Returns the parameters loaded."""
    if state_dict.get("format") == SET_FORMAT:
        merged = {n: s for sd in state_dict["optimizers"].values() for n, s in sd["state"].items()}
    elif state_dict.get("format") == NAMED_FORMAT:
        merged = dict(state_dict["state"])
    else:
        raise PartError("optimizer state is not keyed by parameter name (build the optimizer with build_optimizer)")
    loaded = 0
    for o in _optimizers_of(optimizer):
        names = _NAMES.get(o)
        for g in o.param_groups:
            for p in g["params"]:
                name = names.get(id(p)) if names else None
                if name in merged:
                    o.state[p] = {
                        k: (v.to(p.device, p.dtype if v.is_floating_point() and k != "step" else v.dtype).clone()
                            if isinstance(v, torch.Tensor) else v)
                        for k, v in merged[name].items()
                    }
                    loaded += 1
    return loaded
