"""Freezing, the one source of truth: who holds a parameter frozen and who pins a module to eval.

Every freeze in partwise — a :class:`~partwise.Parts` registry's, :func:`freeze` on a plain module,
any number of registries over one model — goes through :func:`hold` and :func:`release`:

* a parameter is *held* while at least one holder froze it. The first hold records the
  ``requires_grad`` it had and switches it off (``.grad`` dropped); the last release puts back exactly
  that flag, so a parameter created with ``requires_grad=False`` (a fixed table) never comes back
  trainable. :func:`trainable_by_nature` tells a held parameter's recorded flag.
* a module is *pinned* to eval mode while at least one holder pins it: a forward pre-hook, registered
  ahead of every other pre-hook, resets ``module.training`` to ``False`` before each forward, so a later
  ``model.train()`` cannot put a frozen BatchNorm back to updating its statistics, and hooks such as
  ``spectral_norm``'s power iteration see eval mode. The last release sets the module's mode back.
* optimizers learn of changes through :func:`subscribe` (``partwise._optim._optimizers`` keeps the optimizers it
  built in step), and a process-wide optimizer step pre-hook drops the gradient and the state of every
  held parameter in *any* ``torch.optim`` optimizer before it steps — including one the user built
  before or after the freeze — so no weight decay, momentum or stale Adam moment ever moves it. Its
  cost is the smaller of the optimizer's parameters and the held ones (nothing for the optimizers
  partwise built, which never hold a frozen parameter).
* freezing is this process's state, not the model's: a copy of a frozen model (``copy.deepcopy``,
  ``pickle``, ``torch.save``) is not frozen. Its modules carry an inert copy of the pin's hook, and
  the names of the parameters a freeze switched off (``_partwise_frozen_params``, on the module owning
  each), so that :func:`adopt_copies` (called by ``Parts(...)`` and :func:`freeze`) gives them their
  own ``requires_grad`` back instead of taking them for fixed parameters.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook
from torch.utils.hooks import RemovableHandle
from torch.utils.weak import WeakIdKeyDictionary

__all__ = ["freeze", "unfreeze", "is_norm", "Mode"]

Mode = Literal["eval", "train"]
_MODES = ("eval", "train")

# parameter -> [holders, requires_grad before the first hold, (weak module, attribute) where it is marked]
_HELD: WeakIdKeyDictionary = WeakIdKeyDictionary()  # untyped in torch: read through _entry()
# module -> [number of pinners, handle of the eval pre-hook]
_PINNED: weakref.WeakKeyDictionary[nn.Module, list[Any]] = weakref.WeakKeyDictionary()
# plain modules frozen with pw.freeze -> their hold and the mode they had
_FROZEN_PLAIN: weakref.WeakKeyDictionary[nn.Module, tuple[Hold, bool]] = weakref.WeakKeyDictionary()
# called with (params that stopped training, params that resumed training, keep, restore)
_LISTENERS: list[Callable[[list[nn.Parameter], list[nn.Parameter], bool, bool], None]] = []
_STEP_HOOK: list[RemovableHandle] = []
# optimizers whose groups follow freezing (partwise built them): only groups a user added are checked
_FOLLOWING: weakref.WeakSet[torch.optim.Optimizer] = weakref.WeakSet()
MARK = "_partwise_frozen_params"  # on a module: names of its parameters a freeze switched off
Owners = dict[int, list[tuple[nn.Module, str]]]  # id(parameter) -> (module, attribute) that hold it


@dataclass(eq=False)
class Hold:
    """What one freeze holds: parameters kept from training and modules pinned to eval."""

    params: list[nn.Parameter]
    modules: list[nn.Module]
    released: bool = False


def is_norm(module: nn.Module) -> bool:
    """True for normalization layers whose behaviour depends on train/eval mode.

    That is every ``torch.nn.modules.batchnorm._NormBase``: BatchNorm1d/2d/3d, SyncBatchNorm, the lazy
    variants and InstanceNorm (whose running statistics are used when ``track_running_stats=True``).
    """
    return isinstance(module, nn.modules.batchnorm._NormBase)


def check_mode(value: str, arg: str) -> None:
    if value not in _MODES:
        raise ValueError(f"{arg}={value!r} is not a mode; use 'eval' (default, frozen stays fixed) or 'train'")


def modules_to_pin(modules: Iterable[nn.Module], norm: Mode, dropout: Mode) -> list[nn.Module]:
    """The modules to keep in eval mode for a frozen part.

    ``norm="eval"`` pins normalization layers (see :func:`is_norm`). ``dropout="eval"`` pins every other
    module — dropout layers and any module whose forward reads ``self.training`` (``nn.GRU(dropout=...)``,
    ``nn.MultiheadAttention``, a user's module with a stochastic branch).
    """
    check_mode(norm, "norm")
    check_mode(dropout, "dropout")
    return [m for m in modules if ((norm == "eval") if is_norm(m) else (dropout == "eval"))]


def _entry(p: torch.Tensor) -> list[Any] | None:
    entry: list[Any] | None = _HELD.get(p)  # type: ignore[no-untyped-call]
    return entry


def holders(p: torch.Tensor) -> int:
    """How many freezes hold ``p`` now (0: none)."""
    entry = _entry(p)
    return int(entry[0]) if entry is not None else 0


def owners_of(root: nn.Module) -> Owners:
    """Every (module, attribute) through which ``root`` holds each of its parameters."""
    out: Owners = {}
    for m in root.modules():
        for attr, p in m._parameters.items():
            if p is not None:
                out.setdefault(id(p), []).append((m, attr))
    return out


def _mark(where: list[tuple[weakref.ref[nn.Module], str]], on: bool) -> None:
    """Add (or remove) a parameter's name to the mark of each module that owns it."""
    for ref, attr in where:
        m = ref()
        if m is None:
            continue
        names: set[str] = m.__dict__.setdefault(MARK, set())
        (names.add if on else names.discard)(attr)
        if not names:
            del m.__dict__[MARK]


def adopt_copies(root: nn.Module) -> list[str]:
    """Give back their own ``requires_grad`` to parameters that arrived switched off from a frozen
    model this one was copied from (pickled, deep-copied, saved with ``torch.save``): a copy is not
    frozen. Returns their names; parameters some freeze holds in this process are left alone."""
    adopted = []
    for path, m in root.named_modules():
        names = m.__dict__.get(MARK)
        for attr in sorted(names or ()):
            p = m._parameters.get(attr)
            if p is not None and p in _HELD:
                continue
            if p is not None and not p.requires_grad:
                p.requires_grad_(True)
                adopted.append(f"{path}.{attr}" if path else attr)
            names.discard(attr)
        if names is not None and not names:
            del m.__dict__[MARK]
    return adopted


def follow(optimizer: torch.optim.Optimizer) -> None:
    """Mark ``optimizer`` as one whose groups follow freezing (held parameters never in them)."""
    _FOLLOWING.add(optimizer)


def trainable_by_nature(p: torch.Tensor) -> bool:
    """The ``requires_grad`` ``p`` has when nobody holds it frozen (``False``: a fixed parameter)."""
    entry = _entry(p)
    return bool(entry[1]) if entry is not None else p.requires_grad


def subscribe(listener: Callable[[list[nn.Parameter], list[nn.Parameter], bool, bool], None]) -> None:
    """Call ``listener(stopped, resumed, keep_state, restore_state)`` after every hold and release."""
    _LISTENERS.append(listener)


def _notify(stopped: list[nn.Parameter], resumed: list[nn.Parameter], keep: bool, restore: bool) -> None:
    if stopped or resumed:
        for listener in _LISTENERS:
            listener(stopped, resumed, keep, restore)


def _drop_held(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    """Step pre-hook on every optimizer: held parameters get no update and keep no state. Walks the
    smaller of the optimizer's parameters and the held ones."""
    if not _HELD:
        return
    groups = optimizer.param_groups
    if optimizer in _FOLLOWING:
        groups = [g for g in groups if "part" not in g]  # a group partwise built never holds a frozen one
    mine = sum(len(g["params"]) for g in groups)
    if not mine:
        return
    candidates: Iterable[torch.Tensor] = (
        [p for g in groups for p in g["params"] if p in _HELD] if mine <= len(_HELD)
        else list(_HELD.keys()))  # type: ignore[no-untyped-call]
    state = optimizer.state
    for p in candidates:
        p.grad = None
        if p in state:
            del state[p]


def _force_eval(module: nn.Module, args: object) -> None:
    if module in _PINNED:  # a copy of a pinned module carries this hook too, and is not pinned
        module.training = False


def _pin(m: nn.Module) -> None:
    entry = _PINNED.get(m)
    if entry is None:
        _PINNED[m] = [1, m.register_forward_pre_hook(_force_eval, prepend=True)]
    else:
        entry[0] += 1
    m.training = False


def _unpin(m: nn.Module, mode: bool) -> None:
    entry = _PINNED.get(m)
    if entry is None:
        return
    entry[0] -= 1
    if entry[0] <= 0:
        entry[1].remove()
        del _PINNED[m]
        m.training = mode


def hold(params: Sequence[nn.Parameter], modules: Sequence[nn.Module], keep_state: bool = False,
         owners: Owners | None = None) -> Hold:
    """Freeze ``params`` and pin ``modules`` on behalf of one holder; undo with :func:`release`.

    ``keep_state`` asks optimizers partwise built to keep the state of parameters leaving training
    (restored by a release with ``restore_state=True``); otherwise it is dropped. ``owners`` (see
    :func:`owners_of`) are where the parameters switched off are marked, for copies of the model.
    """
    if not _STEP_HOOK:
        _STEP_HOOK.append(register_optimizer_step_pre_hook(_drop_held))
    stopped = []
    for p in dict.fromkeys(params):  # a tied tensor listed twice is held once
        entry = _entry(p)
        if entry is None:
            where = [(weakref.ref(m), attr) for m, attr in (owners or {}).get(id(p), [])]  # weak: no cycle
            _HELD[p] = [1, p.requires_grad, where]
            if p.requires_grad:
                stopped.append(p)
                _mark(where, True)
        else:
            entry[0] += 1
        p.requires_grad_(False)
        p.grad = None
    mods = list(dict.fromkeys(modules))
    for m in mods:
        _pin(m)
    _notify(stopped, [], keep_state, False)
    return Hold(list(dict.fromkeys(params)), mods)


def release(h: Hold, mode: bool, restore_state: bool = False) -> None:
    """Release one hold: parameters nobody else holds get their own ``requires_grad`` back, modules
    nobody else pins go to ``mode`` (True = train). Releasing twice does nothing."""
    if h.released:
        return
    h.released = True
    resumed = []
    for p in h.params:
        entry = _entry(p)
        if entry is None:
            continue
        entry[0] -= 1
        if entry[0] <= 0:
            del _HELD[p]
            p.requires_grad_(bool(entry[1]))
            if entry[1]:
                resumed.append(p)
                _mark(entry[2], False)
    for m in h.modules:
        _unpin(m, mode)
    _notify([], resumed, False, restore_state)


def reapply_pins(modules: Iterable[nn.Module]) -> None:
    """Set ``training=False`` on every pinned module among ``modules`` (after a ``model.train()``)."""
    for m in modules:
        if m in _PINNED:
            m.training = False


def freeze(module: nn.Module, *, norm: Mode = "eval", dropout: Mode = "eval") -> nn.Module:
    """Freeze a plain module: no gradient, no parameter update, eval-mode norm and dropout.

    Gradients still flow *through* the module to whatever produced its input. Optimizers that
    :func:`~partwise.build_optimizer` built drop these parameters at once; any other optimizer
    skips them and drops their state at its next ``step()``. Composes with :class:`~partwise.Parts`:
    a parameter or module frozen by both stays frozen until both let go.

    Examples:
        >>> enc = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Dropout(0.5))
        >>> _ = freeze(enc)
        >>> _ = enc.train()
        >>> _ = enc(torch.randn(3, 4))
        >>> enc[1].training, enc[0].weight.requires_grad
        (False, False)
    """
    adopt_copies(module)
    previous = _FROZEN_PLAIN.get(module)
    was_training = previous[1] if previous else module.training
    h = hold(list(module.parameters()), modules_to_pin(module.modules(), norm, dropout), owners=owners_of(module))
    if previous:
        release(previous[0], was_training)
    _FROZEN_PLAIN[module] = (h, was_training)
    return module


def unfreeze(module: nn.Module) -> nn.Module:
    """Undo :func:`freeze`: parameters back to the ``requires_grad`` they had (a parameter created
    with ``requires_grad=False`` stays so), pinned modules back to the mode the module had when it was
    frozen — unless a :class:`~partwise.Parts` registry still holds them frozen.

    Examples:
        >>> enc = freeze(nn.Linear(2, 2))
        >>> unfreeze(enc).weight.requires_grad
        True
    """
    previous = _FROZEN_PLAIN.pop(module, None)
    if previous is not None:
        release(previous[0], previous[1])
    return module
