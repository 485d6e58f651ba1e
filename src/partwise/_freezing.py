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
* optimizers learn of changes through :func:`subscribe` (``partwise._optim`` keeps the optimizers it
  built in step), and a process-wide optimizer step pre-hook drops the gradient and the state of every
  held parameter in *any* ``torch.optim`` optimizer before it steps — including one the user built
  before or after the freeze — so no weight decay, momentum or stale Adam moment ever moves it.
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

__all__ = ["freeze", "unfreeze", "is_norm", "pinned_modules", "Mode"]

Mode = Literal["eval", "train"]
_MODES = ("eval", "train")

# parameter -> [number of holders, requires_grad before the first hold]
_HELD: WeakIdKeyDictionary = WeakIdKeyDictionary()  # untyped in torch: read through _entry()
# module -> [number of pinners, handle of the eval pre-hook]
_PINNED: weakref.WeakKeyDictionary[nn.Module, list[Any]] = weakref.WeakKeyDictionary()
# plain modules frozen with pw.freeze -> their hold and the mode they had
_FROZEN_PLAIN: weakref.WeakKeyDictionary[nn.Module, tuple[Hold, bool]] = weakref.WeakKeyDictionary()
# called with (params that stopped training, params that resumed training, keep, restore)
_LISTENERS: list[Callable[[list[nn.Parameter], list[nn.Parameter], bool, bool], None]] = []
_STEP_HOOK: list[RemovableHandle] = []


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


def is_held(p: torch.Tensor) -> bool:
    """True while some partwise freeze holds ``p``."""
    return p in _HELD


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
    """Step pre-hook on every optimizer: held parameters get no update and keep no state."""
    if not _HELD:
        return
    state = optimizer.state
    for p in list(_HELD.keys()):  # type: ignore[no-untyped-call]
        p.grad = None
        if p in state:
            del state[p]


def _force_eval(module: nn.Module, args: object) -> None:
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


def hold(params: Sequence[nn.Parameter], modules: Sequence[nn.Module], keep_state: bool = False) -> Hold:
    """Freeze ``params`` and pin ``modules`` on behalf of one holder; undo with :func:`release`.

    ``keep_state`` asks optimizers partwise built to keep the state of parameters leaving training
    (restored by a release with ``restore_state=True``); otherwise it is dropped.
    """
    if not _STEP_HOOK:
        _STEP_HOOK.append(register_optimizer_step_pre_hook(_drop_held))
    stopped = []
    for p in dict.fromkeys(params):  # a tied tensor listed twice is held once
        entry = _entry(p)
        if entry is None:
            _HELD[p] = [1, p.requires_grad]
            if p.requires_grad:
                stopped.append(p)
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
    for m in h.modules:
        _unpin(m, mode)
    _notify([], resumed, False, restore_state)


def reapply_pins(modules: Iterable[nn.Module]) -> None:
    """Set ``training=False`` on every pinned module among ``modules`` (after a ``model.train()``)."""
    for m in modules:
        if m in _PINNED:
            m.training = False


def pinned_modules(module: nn.Module) -> list[nn.Module]:
    """The modules below (and including) ``module`` that are pinned to eval mode."""
    return [m for m in module.modules() if m in _PINNED]


def freeze(module: nn.Module, *, norm: Mode = "eval", dropout: Mode = "eval") -> nn.Module:
    """Freeze a plain module: no gradient, no parameter update, eval-mode norm and dropout.

    Gradients still flow *through* the module to whatever produced its input. Optimizers that
    :func:`~partwise.build_optimizer` built drop these parameters at once; any other optimizer
    skips them and drops their state at its next ``step()``. Composes with :class:`~partwise.Parts`:
    a parameter or module frozen by both stays frozen until both let go.

    >>> enc = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Dropout(0.5))
    >>> _ = freeze(enc)
    >>> _ = enc.train()
    >>> _ = enc(torch.randn(3, 4))
    >>> enc[1].training, enc[0].weight.requires_grad
    (False, False)
    """
    previous = _FROZEN_PLAIN.get(module)
    was_training = previous[1] if previous else module.training
    h = hold(list(module.parameters()), modules_to_pin(module.modules(), norm, dropout))
    if previous:
        release(previous[0], was_training)
    _FROZEN_PLAIN[module] = (h, was_training)
    return module


def unfreeze(module: nn.Module) -> nn.Module:
    """Undo :func:`freeze`: parameters back to the ``requires_grad`` they had (a parameter created
    with ``requires_grad=False`` stays so), pinned modules back to the mode the module had when it was
    frozen — unless a :class:`~partwise.Parts` registry still holds them frozen.

    >>> enc = freeze(nn.Linear(2, 2))
    >>> unfreeze(enc).weight.requires_grad
    True
    """
    previous = _FROZEN_PLAIN.pop(module, None)
    if previous is not None:
        release(previous[0], previous[1])
    return module
