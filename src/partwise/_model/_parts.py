"""The part registry: names for the pieces of a model, and freezing with guarantees.

Ownership is by identity. Every parameter belongs to exactly one part. A module is *covered* by a
part when every parameter below it belongs to that part; a module without parameters (a Dropout, a
``BatchNorm1d(affine=False)``) is covered by the part that covers its nearest ancestor with
parameters. Freezing a part pins every module it covers — however the part was selected. A module
whose parameters are split between parts (the root, a stack holding another part's shared embedding)
and its parameter-less children are pinned only while every one of those parts is frozen.
"""

from __future__ import annotations

import contextlib
import warnings
import weakref
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from .._errors import PartError
from . import _freezing as fz
from ._freezing import Mode, check_mode, modules_to_pin, reapply_pins
from ._guard import FrozenGuard
from ._names import closest
from ._part import Part, SharedTensor
from ._selectors import resolve

__all__ = ["Parts", "Part", "SharedTensor", "REST"]

REST = "rest"
Spec = Mapping[str, "str | Sequence[str]"]


@dataclass
class _FrozenState:
    norm: Mode
    dropout: Mode
    hold: fz.Hold
    kept_state: bool


class Parts:
    """Named parts of any ``nn.Module``; every parameter in exactly one part, matched by identity.

    Args:
        model: the model. It is not modified by building the registry.
        spec: part name -> selector or list of selectors (module path, glob ``"decoder.layers.*"``,
            regex ``"re:.*embed.*"``, type ``"type:BatchNorm1d"``, and ``!`` to exclude). Without a
            spec, one part per top-level child that owns parameters. Parameters no selector matches go
            to a part named ``"rest"``. A parameter *name* matched by two parts is an error (no
            precedence rules: narrow a selector or exclude with ``!``).

    Parameters created with ``requires_grad=False`` are *fixed*: they belong to their part, are
    guarded when it is frozen, but never become trainable and never enter an optimizer.

    Examples:
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
        self._joint: list[tuple[str, nn.Module, frozenset[str]]] = []
        self._joint_box = [fz.Hold([], [])]  # the hold pinning joint modules (a box: the finalizer reads it)
        adopted = fz.adopt_copies(model)
        if adopted:
            warnings.warn(f"{len(adopted)} parameter(s) were switched off by a freeze that does not hold them "
                          f"({', '.join(adopted[:4])}{' ...' if len(adopted) > 4 else ''}): the model was copied "
                          "(deepcopy, pickle, torch.save) or its parameters replaced while frozen. Freezing does "
                          "not carry over, so they are trainable again; freeze them in this registry",
                          stacklevel=2)
        self._build(self._normalise_spec(spec))
        self._identity = self._current_identity()
        self._owners = fz.owners_of(model)
        # the holds of a registry end with it: a dropped registry leaves nothing frozen behind
        release = weakref.finalize(self, _release_all, self._frozen, self._joint_box, weakref.ref(model))
        release.atexit = False

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
        errors = []
        for name, sel in spec.items():
            if not isinstance(name, str) or not name or name == REST:
                errors.append(
                    f"part name {name!r} is not allowed: use a non-empty string other than {REST!r} "
                    f"({REST!r} collects parameters no selector matches)"
                )
                continue
            sels: list[Any] = [sel] if isinstance(sel, str) else list(sel) if isinstance(sel, list | tuple) else [sel]
            bad = [s for s in sels if not isinstance(s, str)]
            if bad:
                errors.append(f"part {name!r}: selector {bad[0]!r} is a {type(bad[0]).__name__}; selectors are "
                              f"strings such as 'encoder', 'decoder.layers.*' or 're:.*embed.*'")
            elif not sels:
                errors.append(f"part {name!r} has an empty selector list; give e.g. {name!r}: 'encoder'")
            out[name] = sels
        if errors:
            raise PartError(" | ".join(errors))
        return out

    def _build(self, spec: dict[str, list[str]]) -> None:
        modules = dict(self.model.named_modules(remove_duplicate=False))
        named = list(self.model.named_parameters(remove_duplicate=False))
        claims: dict[str, list[str]] = {}
        selections, errors = {}, []
        for part, sels in spec.items():
            try:
                selections[part] = resolve(sels, modules, [n for n, _ in named], f"part {part!r}")
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
        rest = Part(REST, ())
        by_id: dict[int, tuple[nn.Parameter, list[str]]] = {}
        for n, p in named:
            by_id.setdefault(id(p), (p, []))[1].append(n)
        aliases = []
        for param, names in by_id.values():
            reaching = list(dict.fromkeys(claims[n][0] for n in names if n in claims))
            owner = reaching[0] if reaching else REST
            canonical = next((n for n in names if n in claims), names[0])
            (rest if owner == REST else self._parts[owner])._params[canonical] = param
            if len(names) > 1:
                self._shared.append(SharedTensor(tuple([canonical, *(n for n in names if n != canonical)]),
                                                 owner, tuple(reaching) or (REST,)))
                unclaimed = [n for n in names if n not in claims]
                if reaching and unclaimed:
                    aliases.append(f"{canonical!r} (part {owner!r}) is also {', '.join(map(repr, unclaimed))}")
        if rest._params:
            self._parts[REST] = rest
            if spec and any(s for s in spec.values()):
                warnings.warn(
                    f"{len(rest._params)} parameter(s) match no selector and form part "
                    f"{REST!r}: {', '.join(list(rest._params)[:5])}",
                    stacklevel=3,
                )
        if aliases:
            warnings.warn(
                f"{len(aliases)} shared tensor(s) are also reached through modules no selector names: "
                f"{'; '.join(aliases[:3])}{' ...' if len(aliases) > 3 else ''}. They belong to the part "
                "named; to split them, name those modules in a part or untie the weights (partwise.untie)",
                stacklevel=3,
            )
        self._assign_modules(modules, selections)

    def _assign_modules(self, modules: dict[str, nn.Module], selections: dict[str, Any]) -> None:
        """Cover modules by ownership (see the module docstring) and note partly-owned selections.

        A module whose parameters belong to several parts (a stack holding a shared embedding and its
        own layers, the root) is *joint*: it and its parameter-less children are pinned only while every
        one of those parts is frozen."""
        part_of = self.part_of()
        owners_of: dict[int, frozenset[str]] = {}
        joint: dict[int, tuple[str, nn.Module, frozenset[str]]] = {}

        def visit(path: str, m: nn.Module, inherited: frozenset[str]) -> None:
            owners = frozenset(part_of[id(p)] for p in m.parameters()) or inherited
            if id(m) in owners_of and owners_of[id(m)] != owners:
                owners = owners_of[id(m)] | owners  # one module under two parents: all of their parts
            owners_of[id(m)] = owners
            if len(owners) == 1:
                self._parts[next(iter(owners))]._modules.setdefault(path, m)
            elif owners:
                joint.setdefault(id(m), (path, m, owners))
            for name, child in m.named_children():
                visit(f"{path}.{name}" if path else name, child, owners)

        visit("", self.model, frozenset())
        for part in self._parts.values():  # a module reached under two paths keeps its first path only
            mine = frozenset({part.name})
            kept: dict[str, nn.Module] = {}
            for path, m in part._modules.items():
                if owners_of.get(id(m)) == mine and all(m is not k for k in kept.values()):
                    kept[path] = m
            part._modules = kept
        self._joint = [(path, m, owners) for path, m, _ in joint.values() if len(owners := owners_of[id(m)]) > 1]
        for name, sel in selections.items():
            self._parts[name].partial = sorted(
                p for p in sel.module_paths
                if owners_of.get(id(modules[p])) != frozenset({name}) and any(True for _ in modules[p].parameters())
            )

    def _sync_joint(self) -> None:
        """Pin the joint modules all of whose parts are frozen (and whose modes all ask for the pin)."""
        wanted = [m for _, m, owners in self._joint
                  if owners <= set(self._frozen)
                  and all(modules_to_pin([m], self._frozen[o].norm, self._frozen[o].dropout) for o in owners)]
        if [id(m) for m in wanted] == [id(m) for m in self._joint_hold.modules]:
            return
        new = fz.hold([], wanted)
        fz.release(self._joint_hold, self.model.training)
        self._joint_box[0] = new

    @property
    def _joint_hold(self) -> fz.Hold:
        return self._joint_box[0]

    def joint_pinned(self) -> list[tuple[str, nn.Module]]:
        """Modules shared by several frozen parts that are pinned now (their buffers are guarded)."""
        pinned = {id(m) for m in self._joint_hold.modules}
        return [(path, m) for path, m, _ in self._joint if id(m) in pinned]

    def _current_identity(self) -> dict[str, int]:
        return {n: id(p) for n, p in self.model.named_parameters(remove_duplicate=False)}

    def check_current(self) -> None:
        """Raise :class:`~partwise.PartError` if the model's parameters are no longer the ones this
        registry was built on (``load_state_dict(assign=True)``, ``replace_module``, user code)."""
        now = self._current_identity()
        if now == self._identity:
            return
        changed = [n for n in self._identity if n in now and now[n] != self._identity[n]]
        gone = [n for n in self._identity if n not in now]
        new = [n for n in now if n not in self._identity]
        what = "; ".join(f"{label}: {', '.join(names[:4])}{' ...' if len(names) > 4 else ''}"
                         for label, names in (("replaced", changed), ("removed", gone), ("added", new)) if names)
        raise PartError(f"the model changed under its Parts registry ({what}); build Parts(model, spec) again, "
                        "and the optimizer after it, once parameters are replaced")

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
                f" (closest to {unknown[0]!r}: {closest(str(unknown[0]), self.names)})"
            )

    def shared(self) -> list[SharedTensor]:
        """Every tensor reachable under more than one name."""
        return list(self._shared)

    def name_of(self) -> dict[int, str]:
        """``id(parameter) -> canonical name`` for every parameter of the model."""
        return {id(p): n for part in self._parts.values() for n, p in part.named_parameters()}

    def part_of(self) -> dict[int, str]:
        """``id(parameter) -> part name`` for every parameter of the model."""
        return {id(p): part.name for part in self._parts.values() for p in part.parameters()}

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

    def held_elsewhere(self, name: str) -> list[str]:
        """Parameters of part ``name`` that another freeze holds (another registry over the same model,
        or :func:`~partwise.freeze`): they stay frozen whatever this registry does, until that one lets go."""
        self._check_names([name])
        state = self._frozen.get(name)
        mine = {id(p) for p in state.hold.params} if state is not None else set()
        return [n for n, p in self._parts[name].named_parameters() if fz.holders(p) > (id(p) in mine)]

    def conflicts(self, frozen: Sequence[str]) -> list[str]:
        """Problems with a state where exactly ``frozen`` parts are frozen: a shared tensor whose parts
        would be half frozen. Empty when that state is possible."""
        target = set(frozen)
        out = []
        for t in self._shared:
            cold = [p for p in t.parts if p in target]
            warm = [p for p in t.parts if p not in target]
            if cold and warm:
                out.append(
                    f"tensor {t.names[0]!r} is the same Parameter as {', '.join(map(repr, t.names[1:]))}; it is "
                    f"reached by part(s) {', '.join(map(repr, cold))} (frozen) and {', '.join(map(repr, warm))} "
                    f"(trainable) — freeze them together ({', '.join(map(repr, t.parts))}) or untie the weights "
                    "(partwise.untie)"
                )
        return out

    # -- freezing ----------------------------------------------------------------------------
    def _check_request(self, names: Sequence[str], verb: str) -> None:
        if not names:
            raise PartError(f"{verb}() got no part names; name them, e.g. parts.{verb}('encoder'), or "
                            f"parts.{verb}(*parts.names) for every part")
        self._check_names(names)
        self.check_current()

    def _check_target(self, frozen_after: set[str], changing: Sequence[str], verb: str) -> None:
        """Refuse a change that would leave a shared tensor reached by a frozen and a trainable part."""
        moving = set(changing)
        for t in self._shared:
            cold = [p for p in t.parts if p in frozen_after]
            warm = [p for p in t.parts if p not in frozen_after]
            if not (cold and warm):
                continue
            inside = next((p for p in t.parts if p in moving), None)
            if inside is None:
                continue  # not touched by this request
            other = (warm if inside in cold else cold)[0]
            stays = "trainable" if other in warm else "frozen"
            raise PartError(
                f"cannot {verb} {inside!r}: tensor {t.names[0]!r} is the same Parameter as "
                f"{', '.join(map(repr, t.names[1:]))}, reached by part {other!r}, which stays {stays}; "
                f"{verb} both together ({', '.join(map(repr, t.parts))}) or untie the weights (partwise.untie)"
            )

    def _pins_for(self, name: str, norm: Mode, dropout: Mode) -> list[nn.Module]:
        return modules_to_pin(self._parts[name].modules(), norm, dropout)

    def freeze(self, *names: str, norm: Mode = "eval", dropout: Mode = "eval", keep_state: bool = False) -> None:
        """Freeze parts: no gradient, out of every optimizer (state dropped), norm and dropout layers
        of every module the part covers kept in eval mode even after ``model.train()``. Gradients
        still flow *through*.

        Args:
            names: parts to freeze (at least one; ``parts.freeze(*parts.names)`` freezes all).
            norm: ``"eval"`` keeps normalization statistics fixed; ``"train"`` lets BatchNorm running
                statistics keep updating (fastai's ``train_bn``) — an explicit choice.
            dropout: ``"eval"`` keeps every other module of the part (dropout, RNN dropout, attention
                dropout) in eval mode; ``"train"`` lets them follow the model's mode.
            keep_state: keep the parts' optimizer state (reported by ``kept_state_bytes``) so that
                ``unfreeze(..., restore_state=True)`` can put it back. Default: dropped, zero bytes kept.
        """
        self._check_request(names, "freeze")
        check_mode(norm, "norm")
        check_mode(dropout, "dropout")
        self._check_target(set(self._frozen) | set(names), names, "freeze")
        self._apply_freeze({n: (norm, dropout) for n in names}, keep_state)
        self._sync_joint()

    def _apply_freeze(self, targets: Mapping[str, tuple[Mode, Mode]], keep_state: bool) -> None:
        for n, (norm, dropout) in targets.items():
            old = self._frozen.get(n)
            if old is not None and (old.norm, old.dropout) == (norm, dropout):
                continue
            h = fz.hold(list(self._parts[n].parameters()), self._pins_for(n, norm, dropout), keep_state, self._owners)
            if old is not None:
                fz.release(old.hold, self.model.training)
            self._frozen[n] = _FrozenState(norm, dropout, h, keep_state or (old is not None and old.kept_state))

    def unfreeze(self, *names: str, restore_state: bool = False) -> None:
        """Make parts trainable again: each parameter gets back the ``requires_grad`` it had before
        partwise froze it (fixed parameters stay fixed), and rejoins its group in every optimizer
        partwise built — with fresh state, or with the state kept by ``freeze(keep_state=True)`` when
        ``restore_state=True``. Unfreezing a part that is not frozen does nothing.
        """
        self._check_request(names, "unfreeze")
        if restore_state:
            lost = [n for n in names if n in self._frozen and not self._frozen[n].kept_state]
            if lost:
                raise PartError(f"unfreeze(restore_state=True): part(s) {lost} were frozen without keep_state=True, "
                                "so their optimizer state was dropped; freeze with keep_state=True to restore it")
        self._check_target(set(self._frozen) - set(names), names, "unfreeze")
        for n in names:
            state = self._frozen.pop(n, None)
            if state is not None:
                fz.release(state.hold, self.model.training, restore_state)
        self._sync_joint()

    @contextlib.contextmanager
    def frozen(self, *names: str, norm: Mode = "eval", dropout: Mode = "eval") -> Iterator[Parts]:
        """Freeze parts inside a ``with`` block and restore the exact previous state on exit:
        ``requires_grad`` flags, module modes, optimizer groups and their state. Parts already frozen
        stay as they are.

        Examples:
            >>> m = nn.Sequential(); m.add_module("enc", nn.Linear(2, 2)); m.add_module("dec", nn.Linear(2, 2))
            >>> parts = Parts(m)
            >>> with parts.frozen("enc"):
            ...     m.enc.weight.requires_grad
            False
            >>> m.enc.weight.requires_grad
            True
        """
        self._check_request(names, "frozen")
        newly = [n for n in names if n not in self._frozen]
        modes = [(m, m.training) for m in self.model.modules()]
        if newly:
            self.freeze(*newly, norm=norm, dropout=dropout, keep_state=True)
        try:
            yield self
        finally:
            if newly:
                self.unfreeze(*newly, restore_state=True)
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
            reapply_pins(state.hold.modules)
        reapply_pins(self._joint_hold.modules)

    def guard(self, include_buffers: bool = True) -> FrozenGuard:
        """A context manager that raises :class:`~partwise.FrozenPartChanged` if a frozen tensor changes."""
        return FrozenGuard(self, include_buffers=include_buffers)

    # -- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Which parts are frozen and how (for checkpoints)."""
        return {"frozen": {n: {"norm": s.norm, "dropout": s.dropout} for n, s in self._frozen.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Freeze exactly the parts ``state`` lists and unfreeze the others (tied parts together)."""
        frozen = dict(state.get("frozen", {}))
        self._check_names(list(frozen))
        self.check_current()
        self._check_target(set(frozen), sorted(set(frozen) ^ set(self._frozen)) or list(frozen), "load")
        targets = {n: (o.get("norm", "eval"), o.get("dropout", "eval")) for n, o in frozen.items()}
        for norm, dropout in targets.values():
            check_mode(norm, "norm")
            check_mode(dropout, "dropout")
        self._apply_freeze(targets, keep_state=False)
        for n in [n for n in self._frozen if n not in frozen]:
            fz.release(self._frozen.pop(n).hold, self.model.training)
        self._sync_joint()

    # -- reporting ---------------------------------------------------------------------------
    def table(self) -> str:
        """A printable table: part, parameters, fixed, trainable/frozen, module modes, shared tensors."""
        shared_by: dict[str, list[str]] = {}
        for t in self._shared:
            for p in t.parts:
                shared_by.setdefault(p, []).append(t.names[0])
        rows = [("part", "params", "fixed", "state", "modes", "shared")]
        for part in self._parts.values():
            ms = list(part.modules())
            n_train = sum(m.training for m in ms)
            mode = "train" if ms and n_train == len(ms) else ("eval" if n_train == 0 else "mixed")
            fixed = sum(p.numel() for n, p in part.named_parameters() if n in set(part.fixed))
            state = "trainable" if fixed < part.numel else "fixed"
            if self.held_elsewhere(part.name) and part.name not in self._frozen:
                state = "frozen elsewhere"
            if part.name in self._frozen:
                s = self._frozen[part.name]
                state = "frozen"
                pinned = [k for k, v in (("norm", s.norm), ("dropout", s.dropout)) if v == "eval"]
                mode = f"{mode}, pinned eval: {'+'.join(pinned)}" if pinned else mode
            rows.append((part.name, f"{part.numel:,}", f"{fixed:,}" if fixed else "-", state, mode,
                         ", ".join(shared_by.get(part.name, [])) or "-"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        if REST in self._parts:
            lines.append(f"note: part {REST!r} holds parameters that no selector matched")
        for part in self._parts.values():
            if part.partial:
                lines.append(f"note: part {part.name!r} owns only some parameters of module(s) "
                             f"{', '.join(map(repr, part.partial[:4]))}; they are pinned to eval only while every "
                             "part owning them is frozen")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"Parts({', '.join(f'{p.name}={p.numel:,}' for p in self._parts.values())})"


def _release_all(frozen: dict[str, _FrozenState], joint: list[fz.Hold], model: weakref.ref[nn.Module]) -> None:
    """A registry's finalizer: release every hold it still has (it was dropped while parts were frozen)."""
    alive = model()
    mode = alive.training if alive is not None else False
    for state in list(frozen.values()):
        fz.release(state.hold, mode)
    frozen.clear()
    fz.release(joint[0], mode)
