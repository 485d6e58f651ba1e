"""Mode enforcement and freezing of plain modules.

Freezing a module means: ``requires_grad`` off, ``.grad`` cleared, and — unless asked otherwise —
its normalization and dropout behaviour pinned to eval mode. Pinning uses a forward pre-hook per
module that resets ``module.training`` to ``False`` before every forward, so a later
``model.train()`` cannot put a frozen BatchNorm back into updating its running statistics.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from typing import Literal

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

__all__ = ["freeze", "unfreeze", "is_norm", "pinned_modules", "Mode"]

Mode = Literal["eval", "train"]
_MODES = ("eval", "train")

# module -> handle of the pre-hook that pins it to eval mode
_PINNED: weakref.WeakKeyDictionary[nn.Module, RemovableHandle] = weakref.WeakKeyDictionary()
# plain modules frozen with pw.freeze -> the modules it pinned
_FROZEN_PLAIN: weakref.WeakKeyDictionary[nn.Module, tuple[list[nn.Module], bool]] = (
    weakref.WeakKeyDictionary()
)


def is_norm(module: nn.Module) -> bool:
    """True for normalization layers whose behaviour depends on train/eval mode.

    That is every ``torch.nn.modules.batchnorm._NormBase``: BatchNorm1d/2d/3d, SyncBatchNorm, the lazy
    variants and InstanceNorm (whose running statistics are used when ``track_running_stats=True``).
    """
    return isinstance(module, nn.modules.batchnorm._NormBase)


def _check_mode(value: str, arg: str) -> None:
    if value not in _MODES:
        raise ValueError(f"{arg}={value!r} is not a mode; use 'eval' (default, frozen stays fixed) or 'train'")


def modules_to_pin(modules: Iterable[nn.Module], norm: Mode, dropout: Mode) -> list[nn.Module]:
    """The modules to keep in eval mode for a frozen part.

    ``norm="eval"`` pins normalization layers (see :func:`is_norm`). ``dropout="eval"`` pins every other
    module — dropout layers and any module whose forward reads ``self.training`` (``nn.GRU(dropout=...)``,
    ``nn.MultiheadAttention``, a user's module with a stochastic branch).
    """
    _check_mode(norm, "norm")
    _check_mode(dropout, "dropout")
    out = []
    for m in modules:
        if (norm == "eval") if is_norm(m) else (dropout == "eval"):
            out.append(m)
    return out


def _force_eval(module: nn.Module, args: object) -> None:
    module.training = False


def pin_eval(modules: Iterable[nn.Module]) -> None:
    """Put ``modules`` in eval mode now and keep them there across later ``.train()`` calls."""
    for m in modules:
        m.training = False
        if m not in _PINNED:
            _PINNED[m] = m.register_forward_pre_hook(_force_eval)


def unpin(modules: Iterable[nn.Module], mode: bool) -> None:
    """Release modules pinned by :func:`pin_eval` and set their mode to ``mode`` (True = train)."""
    for m in modules:
        handle = _PINNED.pop(m, None)
        if handle is not None:
            handle.remove()
        m.training = mode


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

    Gradients still flow *through* the module to whatever produced its input. Unlike
    :meth:`partwise.Parts.freeze`, this knows nothing of optimizers: build (or rebuild) optimizers
    after freezing, or use :class:`partwise.Parts`.

    >>> enc = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Dropout(0.5))
    >>> _ = freeze(enc)
    >>> _ = enc.train()
    >>> _ = enc(torch.randn(3, 4))
    >>> enc[1].training, enc[0].weight.requires_grad
    (False, False)
    """
    pins = modules_to_pin(module.modules(), norm, dropout)
    was_training = _FROZEN_PLAIN[module][1] if module in _FROZEN_PLAIN else module.training
    clear_grads(module.parameters())
    pin_eval(pins)
    _FROZEN_PLAIN[module] = (pins, was_training)
    return module


def unfreeze(module: nn.Module) -> nn.Module:
    """Undo :func:`freeze`: parameters trainable again, pinned modules back to the mode the module had
    when it was frozen.

    >>> enc = freeze(nn.Linear(2, 2))
    >>> unfreeze(enc).weight.requires_grad
    True
    """
    for p in module.parameters():
        p.requires_grad_(True)
    pins, was_training = _FROZEN_PLAIN.pop(module, (pinned_modules(module), module.training))
    unpin(pins, was_training)
    return module


def clear_grads(params: Iterable[torch.Tensor]) -> None:
    """``requires_grad`` off and ``.grad`` dropped, so no optimizer step can touch these tensors."""
    for p in params:
        p.requires_grad_(False)
        p.grad = None
