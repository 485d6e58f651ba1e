"""The part registry: names for the pieces of a model, and freezing with guarantees."""

from __future__ import annotations

import contextlib
import difflib
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from torch import nn

from ._errors import PartError
from ._freezing import Mode, clear_grads, modules_to_pin, pin_eval, reapply_pins, unpin
from ._selectors import resolve

if TYPE_CHECKING:
    from ._guard import FrozenGuard

__all__ = ["Parts", "Part", "SharedTensor", "REST"]

REST = "rest"
Spec = Mapping[str, "str | Sequence[str]"]


@dataclass(frozen=True)
class SharedTensor:
    """One ``Parameter`` reachable under several names (tied embeddings, T5-style shared tables).

    ``owner`` is the part the tensor belongs to (the part of its first name); ``parts`` every part
    that reaches it under some name.
    """

    names: tuple[str, ...]
    owner: str
    parts: tuple[str, ...]


@dataclass
class Part:
    """A named piece of a model: the parameters it owns and the modules it covers."""

    name: str
    selectors: tuple[str, ...]
    named_parameters: dict[str, nn.Parameter] = field(default_factory=dict)
    modules: dict[str, nn.Module] = field(default_factory=dict)

    @property
    def parameters(self) -> list[nn.Parameter]:
        return list(self.named_parameters.values())

    @property
    def numel(self) -> int:
        return sum(p.numel() for p in self.named_parameters.values())

    def named_buffers(self) -> Iterator[tuple[str, Any]]:
        """Buffers of the part's modules (not recursing: ``modules`` already lists the subtree)."""
        for path, m in self.modules.items():
            for bname, buf in m.named_buffers(recurse=False):
                if buf is not None:
                    yield (f"{path}.{bname}" if path else bname), buf


class _Binding(Protocol):
    """An optimizer partwise built: told when a part leaves or rejoins training."""

    @property
    def alive(self) -> bool: ...

    def detach_part(self, part: str) -> Any: ...

    def attach_part(self, part: str, stash: Any | None) -> None: ...


@dataclass
class _FrozenState:
    norm: Mode
    dropout: Mode
    pinned: list[nn.Module]


def _closest(word: str, names: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(names), n=3, cutoff=0.4) or list(names)[:5]
    return ", ".join(repr(c) for c in close)


class Parts:
    """Named parts of any ``nn.Module``; every parameter in exactly one part, matched by identity.

    Args:
        model: the model. It is not modified by building the registry.
        spec: part name -> selector or list of selectors (see :mod:`partwise._selectors`: module path,
            glob ``"decoder.layers.*"``, regex ``"re:.*embed.*"``, type ``"type:BatchNorm1d"``, and
            ``!`` to exclude). Without a spec, one part per top-level child that owns parameters.
            Parameters no selector matches go to a part named ``"rest"``. A parameter *name* matched
            by two parts is an error (no precedence rules: narrow a selector or exclude with ``!``).

    >>> model = nn.Sequential()
    >>> model.add_module("encoder", nn.Linear(4, 8)); model.add_module("decoder", nn.Linear(8, 2))
    >>> parts = Parts(model)
    >>> parts.names
    ['encoder', 'decoder']
    >>> parts.freeze("encoder")
    >>> model.encoder.weight.requires_grad
    False
    """

    def __init__(self, model: nn.Module, spec: Spec | None = None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"Parts(model=...) needs a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self._parts: dict[str, Part] = {}
        self._shared: list[SharedTensor] = []
        self._frozen: dict[str, _FrozenState] = {}
        self._bindings: list[_Binding] = []
        self._stash: dict[str, list[tuple[_Binding, Any]]] = {}
        self._build(self._normalise_spec(spec))

    # -- construction ------------------------------------------------------------------------
    def _normalise_spec(self, spec: Spec | None) -> dict[str, list[str]]:
        if spec is None:
            return {
                name: [name]
                for name, child in self.model.named_children()
                if any(True for _ in child.parameters())
            }
        if not isinstance(spec, Mapping):
            raise PartError(f"spec must map part names to selectors, got {type(spec).__name__}")
        out: dict[str, list[str]] = {}
        for name, sel in spec.items():
            if not isinstance(name, str) or not name or name == REST:
                raise PartError(
                    f"part name {name!r} is not allowed: use a non-empty string other than {REST!r} "
                    f"({REST!r} collects parameters no selector matches)"
                )
            out[name] = [sel] if isinstance(sel, str) else list(sel)
            if not out[name]:
                raise PartError(f"part {name!r} has an empty selector list; give e.g. {name!r}: 'encoder'")
        return out

    def _build(self, spec: dict[str, list[str]]) -> None:
        modules = dict(self.model.named_modules(remove_duplicate=False))
        named = list(self.model.named_parameters(remove_duplicate=False))
        all_names = [n for n, _ in named]
        claims: dict[str, list[str]] = {}
        selections, errors = {}, []
        for part, sels in spec.items():
            try:
                selections[part] = resolve(sels, modules, all_names, f"part {part!r}")
            except PartError as e:
                errors.append(str(e))
                continue
            for pname in selections[part].param_names:
                claims.setdefault(pname, []).append(part)
        overlaps = [f"{n!r} by parts {c[0]!r} and {c[1]!r}" for n, c in claims.items() if len(c) > 1]
        if overlaps:
            errors.append(
                f"{len(overlaps)} parameter(s) matched by two parts: {'; '.join(overlaps[:5])}"
                + (" ..." if len(overlaps) > 5 else "")
                + " — each parameter must be in exactly one part: narrow a selector, or exclude with "
                "'!', e.g. ['decoder', '!decoder.out']"
            )
        if errors:
            raise PartError(" | ".join(errors))

        self._parts = {p: Part(p, tuple(s)) for p, s in spec.items()}
        by_id: dict[int, tuple[nn.Parameter, list[str]]] = {}
        for n, p in named:
            by_id.setdefault(id(p), (p, []))[1].append(n)
        rest = Part(REST, ())
        for param, names in by_id.values():
            reaching = list(dict.fromkeys(claims[n][0] for n in names if n in claims))
            owner = claims[names[0]][0] if names[0] in claims else (reaching[0] if reaching else REST)
            (rest if owner == REST else self._parts[owner]).named_parameters[names[0]] = param
            if len(names) > 1:
                if owner == REST:
                    reaching = [REST]
                elif any(n not in claims for n in names) and REST not in reaching:
                    reaching.append(REST)
                self._shared.append(SharedTensor(tuple(names), owner, tuple(reaching)))
        for part, sel in selections.items():
            self._parts[part].modules = {p: modules[p] for p in sorted(sel.module_paths)}
        if rest.named_parameters:
            owners = {n.rpartition(".")[0] for n in rest.named_parameters}
            rest.modules = {p: modules[p] for p in sorted(owners)}
            self._parts[REST] = rest
            if spec and any(s for s in spec.values()):
                warnings.warn(
                    f"{len(rest.named_parameters)} parameter(s) match no selector and form part "
                    f"{REST!r}: {', '.join(list(rest.named_parameters)[:5])}",
                    stacklevel=3,
                )

    # -- lookup ------------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        """Part names in spec order (``"rest"`` last, when present)."""
        return list(self._parts)

    def __getitem__(self, name: str) -> Part:
        self._check_names([name])
        return self._parts[name]

    def __contains__(self, name: object) -> bool:
        return name in self._parts

    def __iter__(self) -> Iterator[Part]:
        return iter(self._parts.values())

    def __len__(self) -> int:
        return len(self._parts)

    def _check_names(self, names: Sequence[str]) -> None:
        unknown = [n for n in names if n not in self._parts]
        if unknown:
            raise PartError(
                f"unknown part(s) {', '.join(map(repr, unknown))}; parts are {', '.join(map(repr, self._parts))}"
                f" (closest to {unknown[0]!r}: {_closest(unknown[0], self.names)})"
            )

    def shared(self) -> list[SharedTensor]:
        """Every tensor reachable under more than one name."""
        return list(self._shared)

    def name_of(self) -> dict[int, str]:
        """``id(parameter) -> canonical name`` for every parameter of the model."""
        return {id(p): n for part in self._parts.values() for n, p in part.named_parameters.items()}

    def part_of(self) -> dict[int, str]:
        """``id(parameter) -> part name`` for every parameter of the model."""
        return {id(p): part.name for part in self._parts.values() for p in part.parameters}

    def is_frozen(self, name: str) -> bool:
        self._check_names([name])
        return name in self._frozen

    def freeze_modes(self, name: str) -> tuple[Mode, Mode] | None:
        """``(norm, dropout)`` modes a frozen part was frozen with; ``None`` if it is trainable."""
        self._check_names([name])
        state = self._frozen.get(name)
        return None if state is None else (state.norm, state.dropout)

    @property
    def frozen_names(self) -> list[str]:
        return [n for n in self._parts if n in self._frozen]

    @property
    def trainable_names(self) -> list[str]:
        return [n for n in self._parts if n not in self._frozen]

    # -- freezing ----------------------------------------------------------------------------
    def _check_shared(self, changing: set[str], freezing: bool) -> None:
        for t in self._shared:
            inside = [p for p in t.parts if p in changing]
            if not inside:
                continue
            other = [p for p in t.parts if p not in changing and (p in self._frozen) != freezing]
            if other:
                verb, stays = ("freeze", "trainable") if freezing else ("unfreeze", "frozen")
                raise PartError(
                    f"cannot {verb} {inside[0]!r}: tensor {t.names[0]!r} is the same Parameter as "
                    f"{', '.join(map(repr, t.names[1:]))}, reached by part {other[0]!r}, which stays {stays}; "
                    f"{verb} both together ({', '.join(map(repr, sorted({*inside, *other})))}) or untie the weights"
                )

    def freeze(self, *names: str, norm: Mode = "eval", dropout: Mode = "eval") -> None:
        """Freeze parts: no gradient, out of every optimizer partwise built (state dropped), norm and
        dropout layers kept in eval mode even after ``model.train()``. Gradients still flow *through*.

        Args:
            names: parts to freeze (none: every part).
            norm: ``"eval"`` keeps normalization statistics fixed; ``"train"`` lets BatchNorm running
                statistics keep updating (fastai's ``train_bn``) — an explicit choice.
            dropout: ``"eval"`` keeps every other module of the part (dropout, RNN dropout, attention
                dropout) in eval mode; ``"train"`` lets them follow the model's mode.
        """
        names = names or tuple(self._parts)
        self._check_names(names)
        pins = {n: modules_to_pin(self._parts[n].modules.values(), norm, dropout) for n in names}
        self._check_shared(set(names), freezing=True)
        for n in names:
            if n in self._frozen:
                self._release(n, keep=set())
            clear_grads(self._parts[n].parameters)
            pin_eval(pins[n])
            self._frozen[n] = _FrozenState(norm, dropout, pins[n])
            stash = [(b, b.detach_part(n)) for b in self._live_bindings()]
            self._stash.setdefault(n, stash)

    def _release(self, name: str, keep: set[str]) -> None:
        state = self._frozen.pop(name)
        still = {id(m) for k, s in self._frozen.items() if k not in keep for m in s.pinned}
        unpin([m for m in state.pinned if id(m) not in still], self.model.training)

    def unfreeze(self, *names: str, restore_state: bool = False) -> None:
        """Make parts trainable again; they rejoin every optimizer partwise built for this registry.

        A part rejoins with its configured options and *fresh* optimizer state (like a new param group
        in a staged fine-tune). ``restore_state=True`` instead puts back the exact group settings and
        state it had when frozen (what :meth:`frozen` does on exit).
        """
        names = names or tuple(self._parts)
        self._check_names(names)
        self._check_shared(set(names), freezing=False)
        for n in names:
            for p in self._parts[n].parameters:
                p.requires_grad_(True)
            if n in self._frozen:
                self._release(n, keep=set())
            stash = {id(b): s for b, s in self._stash.pop(n, [])}
            for b in self._live_bindings():
                b.attach_part(n, stash.get(id(b)) if restore_state else None)

    @contextlib.contextmanager
    def frozen(self, *names: str, norm: Mode = "eval", dropout: Mode = "eval") -> Iterator[Parts]:
        """Freeze parts inside a ``with`` block and restore the exact previous state on exit:
        ``requires_grad`` flags, module modes, optimizer groups and their state.

        >>> m = nn.Sequential(); m.add_module("enc", nn.Linear(2, 2)); m.add_module("dec", nn.Linear(2, 2))
        >>> parts = Parts(m)
        >>> with parts.frozen("enc"):
        ...     m.enc.weight.requires_grad
        False
        >>> m.enc.weight.requires_grad
        True
        """
        names = names or tuple(self._parts)
        self._check_names(names)
        grads = {id(p): p.requires_grad for part in self._parts.values() for p in part.parameters}
        modes = [(m, m.training) for m in self.model.modules()]
        newly = [n for n in names if n not in self._frozen]
        self.freeze(*newly, norm=norm, dropout=dropout)
        try:
            yield self
        finally:
            self.unfreeze(*newly, restore_state=True)
            for part in self._parts.values():
                for p in part.parameters:
                    p.requires_grad_(grads[id(p)])
            for m, mode in modes:
                m.training = mode

    def train(self, mode: bool = True) -> nn.Module:
        """``model.train(mode)``, then re-pin frozen parts' norm/dropout layers to eval mode."""
        self.model.train(mode)
        self.apply_modes()
        return self.model

    def apply_modes(self) -> None:
        """Set ``training=False`` on every module a frozen part pins (call after ``model.train()``;
        the pins also re-apply themselves before each forward)."""
        for state in self._frozen.values():
            reapply_pins(state.pinned)

    def guard(self, include_buffers: bool = True) -> FrozenGuard:
        """A context manager that raises :class:`~partwise.FrozenPartChanged` if a frozen tensor changes."""
        from ._guard import FrozenGuard

        return FrozenGuard(self, include_buffers=include_buffers)

    # -- optimizers --------------------------------------------------------------------------
    def _bind(self, binding: _Binding) -> None:
        self._bindings.append(binding)

    def _live_bindings(self) -> list[_Binding]:
        self._bindings = [b for b in self._bindings if b.alive]
        return list(self._bindings)

    # -- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Which parts are frozen and how (for checkpoints)."""
        return {"frozen": {n: {"norm": s.norm, "dropout": s.dropout} for n, s in self._frozen.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Freeze exactly the parts ``state`` lists and unfreeze the others."""
        frozen = dict(state.get("frozen", {}))
        self._check_names(list(frozen))
        thaw = [n for n in self._frozen if n not in frozen]
        if thaw:
            self.unfreeze(*thaw)
        for n, opts in frozen.items():
            self.freeze(n, norm=opts.get("norm", "eval"), dropout=opts.get("dropout", "eval"))

    # -- reporting ---------------------------------------------------------------------------
    def table(self) -> str:
        """A printable table: part, parameters, trainable/frozen, module modes, shared tensors."""
        shared_by: dict[str, list[str]] = {}
        for t in self._shared:
            for p in t.parts:
                shared_by.setdefault(p, []).append(t.names[0])
        rows = [("part", "params", "state", "modes", "shared")]
        for part in self._parts.values():
            ms = list(part.modules.values())
            n_train = sum(m.training for m in ms)
            mode = "train" if ms and n_train == len(ms) else ("eval" if n_train == 0 else "mixed")
            state = "trainable"
            if part.name in self._frozen:
                s = self._frozen[part.name]
                state = "frozen"
                pinned = [k for k, v in (("norm", s.norm), ("dropout", s.dropout)) if v == "eval"]
                mode = f"{mode}, pinned eval: {'+'.join(pinned)}" if pinned else mode
            rows.append((part.name, f"{part.numel:,}", state, mode, ", ".join(shared_by.get(part.name, [])) or "-"))
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        if REST in self._parts:
            lines.append(f"note: part {REST!r} holds parameters that no selector matched")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"Parts({', '.join(f'{p.name}={p.numel:,}' for p in self._parts.values())})"
