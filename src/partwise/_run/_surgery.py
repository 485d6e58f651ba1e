"""Model surgery: swap a module, copy what still fits from another model, load one part.

These are the steps of retraining a decoder on a kept encoder (a new output layer for a new task,
weights carried over by name and, for vocabulary-indexed tables, by token). They act on the model;
a :class:`~partwise.Parts` registry or an optimizer built before a swap still holds the old
module's parameters, so build them after surgery.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from .._errors import CheckpointError, CheckpointNotFound, PartError
from .._model._names import closest
from .._model._parts import Parts
from ._checkpoint import (
    best_or_latest,
    mismatch_error,
    part_tensors,
    read_meta,
    read_part,
    resolve_checkpoint,
    tensor_problems,
)
from ._layout import POINTERS

__all__ = ["replace_module", "transfer_state", "TransferReport", "VocabTransfer", "load_part"]

Source = nn.Module | Mapping[str, Tensor] | str | os.PathLike[str]
Rename = Mapping[str, str] | Callable[[str], "str | None"]
_SHOWN = 5  # new tokens listed per vocabulary-mapped tensor in a report


def _first_tensor(module: nn.Module) -> Tensor | None:
    """The first floating-point parameter or buffer of ``module`` (what its device/dtype is)."""
    for t in (*module.parameters(), *module.buffers()):
        if t.is_floating_point():
            return t
    return None


def replace_module(model: nn.Module, path: str, new: nn.Module, match_device: bool = True
                   ) -> nn.Module | None:
    """Put ``new`` at the dotted ``path`` of ``model`` and return the module that was there.

    Numeric components index ``nn.ModuleList``/``nn.Sequential`` (``"decoder.layers.1.ff"``). An
    attribute that is ``None`` (an optional submodule left out, e.g. an encoder's ``bridge``) can be
    filled; ``None`` is returned then.
    With ``match_device`` the new module is moved to the old one's device and floating dtype (or
    the parent's, for an empty slot) when they differ. It takes the old one's train/eval mode.
    A :class:`~partwise.Parts` registry or optimizer built before the swap still refers to the old
    parameters: build ``Parts(model)`` and optimizers after surgery.

    Raises:
        PartError: ``path`` names no submodule (the message lists the closest paths), or ``new``
            contains the slot's parent (a cycle).

    Examples:
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        >>> old = replace_module(model, "2", nn.Linear(8, 5))
        >>> old.out_features, model[2].out_features
        (3, 5)
    """
    if not isinstance(model, nn.Module) or not isinstance(new, nn.Module):
        bad = model if not isinstance(model, nn.Module) else new
        raise TypeError(f"replace_module() needs nn.Module model and new module, got {type(bad).__name__}")
    if not isinstance(path, str) or not path:
        raise PartError(f"replace_module(): path={path!r} must name a submodule, e.g. 'decoder.out'")
    modules = dict(model.named_modules(remove_duplicate=False))
    parent_path, _, name = path.rpartition(".")
    parent = modules.get(parent_path)
    empty_slot = parent is not None and name in vars(parent) and vars(parent)[name] is None
    if parent is None or not (name in parent._modules or empty_slot):
        raise PartError(
            f"replace_module(): model {type(model).__name__} has no submodule {path!r}; closest: "
            f"{closest(path, [p for p in modules if p])}"
        )
    ancestors = {id(model), *(id(modules[p]) for p in modules if path.startswith(p + "."))}
    if any(id(m) in ancestors for m in new.modules()):
        raise PartError(f"replace_module(): the new module for {path!r} contains a module above that "
                        "slot, which would make the model contain itself; pass a fresh module")
    old: nn.Module | None = parent._modules.get(name)
    if match_device:
        ref = _first_tensor(old) if old is not None else None
        ref = ref if ref is not None else _first_tensor(parent)
        mine = _first_tensor(new)
        if ref is not None and mine is not None and (mine.device, mine.dtype) != (ref.device, ref.dtype):
            new.to(device=ref.device, dtype=ref.dtype)
    new.train((old if old is not None else parent).training)
    setattr(parent, name, new)
    return old


@dataclass(frozen=True)
class VocabTransfer:
    """How one vocabulary-indexed tensor was filled: rows copied by token, rows initialised new."""

    name: str
    mapped: int
    new_tokens: tuple[str, ...]
    dropped: int

    def __str__(self) -> str:
        shown = ", ".join(repr(t) for t in self.new_tokens[:_SHOWN])
        more = f" (+{len(self.new_tokens) - _SHOWN} more)" if len(self.new_tokens) > _SHOWN else ""
        new = f"{len(self.new_tokens)} new = mean of old rows" + (f": {shown}{more}" if shown else "")
        return f"{self.name}: {self.mapped} rows mapped by token, {new}; {self.dropped} old tokens dropped"


@dataclass(frozen=True)
class TransferReport:
    """What :func:`transfer_state` did. Names are target names (after ``rename``).

    Attributes:
        copied: target tensors that received a value (vocabulary-mapped ones included).
        skipped_shape: ``(name, source shape, target shape)`` of tensors left alone for their shape.
        missing: target tensors with no source tensor (left as they were).
        unexpected: source tensors with no target tensor (or renamed to ``None``).
        vocab: one :class:`VocabTransfer` per ``vocab_map`` entry.
    """

    copied: tuple[str, ...]
    skipped_shape: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...]
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    vocab: tuple[VocabTransfer, ...]

    @property
    def counts(self) -> dict[str, int]:
        """Number of names in each category."""
        return {"copied": len(self.copied), "skipped_shape": len(self.skipped_shape),
                "missing": len(self.missing), "unexpected": len(self.unexpected)}

    def __str__(self) -> str:
        c = self.counts
        lines = [f"TransferReport: {c['copied']} copied, {c['skipped_shape']} skipped (shape), "
                 f"{c['missing']} missing, {c['unexpected']} unexpected"]
        sections: list[tuple[str, list[str]]] = [
            ("copied", list(self.copied)),
            ("skipped (shape; source vs target)",
             [f"{n}: {tuple(s)} vs {tuple(t)}" for n, s, t in self.skipped_shape]),
            ("missing (not in source; left as they were)", list(self.missing)),
            ("unexpected (not in target; ignored)", list(self.unexpected)),
            ("vocabulary", [str(v) for v in self.vocab]),
        ]
        for title, items in sections:
            if items:
                lines.append(f"  {title}:")
                lines.extend(f"    {item}" for item in items[:20])
                if len(items) > 20:
                    lines.append(f"    ... +{len(items) - 20} more")
        return "\n".join(lines)


def _checkpoint_tensors(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    ckpt = resolve_checkpoint(Path(path))
    out: dict[str, Tensor] = {}
    for fname in read_meta(ckpt)["parts"].values():
        out.update(read_part(ckpt, fname))
    return out


def _source_tensors(source: Source) -> dict[str, Tensor]:
    if isinstance(source, nn.Module):
        return {k: v for k, v in source.state_dict().items() if isinstance(v, Tensor)}
    if isinstance(source, str | os.PathLike):
        return _checkpoint_tensors(source)
    if isinstance(source, Mapping):
        bad = [k for k, v in source.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
        if bad:
            raise TypeError(f"transfer_state(): source entry {bad[0]!r} is not a str -> Tensor pair; "
                            "pass a state dict (model.state_dict())")
        return dict(source)
    raise TypeError(f"transfer_state(): source must be an nn.Module, a state dict or a checkpoint "
                    f"path, got {type(source).__name__}")


def _renamer(rename: Rename | None) -> Callable[[str], str | None]:
    if rename is None:
        return lambda name: name
    if callable(rename):
        return rename
    if not isinstance(rename, Mapping):
        raise TypeError(f"transfer_state(): rename must be a mapping of prefixes or a callable, "
                        f"got {type(rename).__name__}")
    prefixes = sorted(rename.items(), key=lambda kv: -len(kv[0]))  # longest prefix wins

    def apply(name: str) -> str:
        for old, new in prefixes:
            if old == "" or name == old or name.startswith(old + "."):
                rest = name[len(old):].lstrip(".")
                return f"{new}.{rest}" if new and rest else (new or rest)
        return name

    return apply


class TokenTable(Protocol):
    """Anything with a ``tokens`` list in id order, such as :class:`partwise.data.Vocab`."""

    @property
    def tokens(self) -> Sequence[str]: ...


def _token_list(tokens: TokenTable | Sequence[str], what: str) -> list[str]:
    # duck-typed: the core never imports partwise.data (a layer above it)
    source: Any = getattr(tokens, "tokens", tokens)
    items = list(tokens) if isinstance(tokens, str) else list(source)
    if isinstance(tokens, str) or any(not isinstance(t, str) for t in items):
        raise TypeError(f"transfer_state(): {what} must be a Vocab or a list of token strings")
    if len(set(items)) != len(items):
        dup = next(t for i, t in enumerate(items) if t in items[:i])
        raise ValueError(f"transfer_state(): {what} lists token {dup!r} twice")
    return items


def _remap_rows(name: str, src: Tensor, tgt: Tensor, old: list[str], new: list[str]
                ) -> tuple[Tensor, VocabTransfer]:
    """Rows of ``src`` (indexed by ``old``) rearranged for ``new``; unknown tokens get the mean row."""
    for label, vocab, t, side in (("old", old, src, "source"), ("new", new, tgt, "target")):
        if t.dim() == 0 or len(vocab) != t.shape[0]:
            raise ValueError(
                f"transfer_state(): vocab_map[{name!r}] {label} vocabulary has {len(vocab)} tokens "
                f"but the {side} tensor has shape {tuple(t.shape)}; dim 0 must be the vocabulary "
                f"size — pass the vocabulary the {side} tensor was built with")
    if src.shape[1:] != tgt.shape[1:]:
        raise ValueError(f"transfer_state(): vocab_map[{name!r}] rows differ: source "
                         f"{tuple(src.shape)} vs target {tuple(tgt.shape)} beyond dim 0")
    index = {t: i for i, t in enumerate(old)}
    src = src.to(device=tgt.device)
    out = src.float().mean(dim=0).to(src.dtype).expand_as(tgt).clone()
    kept = [(j, index[t]) for j, t in enumerate(new) if t in index]
    if kept:
        rows_new, rows_old = (torch.tensor(x, device=tgt.device) for x in zip(*kept, strict=True))
        out[rows_new] = src[rows_old]
    fresh = tuple(t for t in new if t not in index)
    return out, VocabTransfer(name, len(kept), fresh, len(set(old) - set(new)))


def _settle_tied(values: dict[str, Tensor], targets: Mapping[str, Tensor], vocab_map: Mapping[str, object],
                 renamed: Mapping[str, tuple[str, Tensor]]) -> set[str]:
    """Several values for one tied target tensor: keep one (a vocabulary-mapped one, else the first),
    drop the others from ``values`` and warn when they differ. Returns the names whose differing
    values were not copied."""
    groups: dict[int, list[str]] = {}
    for name in values:
        groups.setdefault(id(targets[name]), []).append(name)
    conflicts: set[str] = set()
    for names in groups.values():
        if len(names) < 2:
            continue
        keep = next((n for n in names if n in vocab_map), names[0])
        differ = [n for n in names if n != keep and not torch.equal(values[n].cpu(), values[keep].cpu())]
        for n in names:
            if n != keep:
                del values[n]
        conflicts.update(differ)
        if differ:
            sources = ", ".join(repr(renamed[n][0]) for n in [keep, *differ])
            warnings.warn(
                f"transfer_state(): target tensors {[keep, *differ]} are one tied tensor, but the source "
                f"has different values for them ({sources}); copied {renamed[keep][0]!r} only. Untie the "
                "target, or rename= the source tensor you want onto the tied one", RuntimeWarning, stacklevel=3)
    return conflicts


def transfer_state(
    source: Source,
    target: nn.Module,
    rename: Rename | None = None,
    vocab_map: Mapping[str, tuple[TokenTable | Sequence[str], TokenTable | Sequence[str]]] | None = None,
    strict_shapes: bool = False,
) -> TransferReport:
    """Copy every tensor of ``source`` whose (renamed) name exists in ``target`` with the same shape.

    Args:
        source: a model, a state dict, or a partwise checkpoint / run directory.
        target: the model to fill (parameters and persistent buffers, in place).
        rename: ``{"old.prefix": "new.prefix"}`` (whole dotted components; longest prefix wins;
            ``""`` matches everything) or a callable ``source name -> target name`` (``None``
            leaves the tensor out).
        vocab_map: ``{target name: (old vocabulary, new vocabulary)}`` for tensors whose dim 0 is
            indexed by token id (embeddings, output weights and biases). Rows are copied by token
            *name*; tokens absent from the old vocabulary get the mean of the old rows. A
            vocabulary is a :class:`~partwise.data.Vocab` or a list of tokens in id order.
        strict_shapes: raise instead of skipping tensors whose shapes differ.

    Several target names of one tied tensor (a shared embedding) receive one value: a
    vocabulary-mapped one if any, else the first; a ``RuntimeWarning`` names the source tensors
    whose different values were not copied.

    Raises:
        PartError: ``vocab_map`` names a tensor missing on either side, two source names rename
            to one target name, or (``strict_shapes``) a shape differs.
        ValueError: a vocabulary's size differs from its tensor's dim 0. Nothing in ``target``
            changes when an error is raised.

    Examples:
        >>> old, new = nn.Embedding(3, 2), nn.Embedding(4, 2)
        >>> report = transfer_state(old, new, vocab_map={"weight": (["a", "b", "c"], ["c", "a", "d", "b"])})
        >>> bool((new.weight[0] == old.weight[2]).all()), report.vocab[0].new_tokens
        (True, ('d',))
    """
    if not isinstance(target, nn.Module):
        raise TypeError(f"transfer_state(): target must be an nn.Module, got {type(target).__name__}")
    renamer = _renamer(rename)
    targets = {k: v for k, v in target.state_dict(keep_vars=True).items() if isinstance(v, Tensor)}
    renamed: dict[str, tuple[str, Tensor]] = {}
    unexpected: list[str] = []
    for key, tensor in _source_tensors(source).items():
        new_key = renamer(key)
        if new_key is None or new_key not in targets:
            unexpected.append(key if new_key is None else new_key)
        elif new_key in renamed:
            raise PartError(f"transfer_state(): source tensors {renamed[new_key][0]!r} and {key!r} both "
                            f"rename to {new_key!r}; make rename map them apart")
        else:
            renamed[new_key] = (key, tensor)
    vocab_map = dict(vocab_map or {})
    absent = [n for n in vocab_map if n not in renamed]
    if absent:
        side = "target" if absent[0] not in targets else "source (after rename)"
        raise PartError(f"transfer_state(): vocab_map names {absent[0]!r}, which the {side} lacks; "
                        f"closest target names: {closest(absent[0], list(targets))}")
    values: dict[str, Tensor] = {}
    vocab_reports: list[VocabTransfer] = []
    skipped: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = []
    for name, (_, tensor) in renamed.items():
        if name in vocab_map:
            old, new = vocab_map[name]
            value, info = _remap_rows(name, tensor.detach(), targets[name].detach(),
                                      _token_list(old, f"vocab_map[{name!r}] old vocabulary"),
                                      _token_list(new, f"vocab_map[{name!r}] new vocabulary"))
            values[name] = value
            vocab_reports.append(info)
        elif tuple(tensor.shape) != tuple(targets[name].shape):
            skipped.append((name, tuple(tensor.shape), tuple(targets[name].shape)))
        else:
            values[name] = tensor.detach()
    if strict_shapes and skipped:
        raise PartError("transfer_state(strict_shapes=True): shapes differ for "
                        + "; ".join(f"{n}: source {s} vs target {t}" for n, s, t in skipped))
    candidates = list(values)
    conflicts = _settle_tied(values, targets, vocab_map, renamed)
    with torch.no_grad():
        for name in values:
            targets[name].copy_(values[name])
    return TransferReport(
        copied=tuple(n for n in candidates if n not in conflicts), skipped_shape=tuple(skipped),
        missing=tuple(n for n in targets if n not in renamed), unexpected=tuple(unexpected),
        vocab=tuple(vocab_reports),
    )


def load_part(model: nn.Module, part: str, checkpoint: str | os.PathLike[str], parts: Parts | None = None,
              source_part: str | None = None, which: str = "best") -> list[str]:
    """Load the weights of one part from a partwise checkpoint; everything else stays as it is.

    The checkpoint's part file must hold exactly the part's tensors (same names, shapes and
    dtypes): anything else is reported at once (:class:`~partwise.CheckpointError`, every
    mismatch in ``.problems``) and nothing is loaded. Loading one part is the partial load; the
    other parts are not looked at.

    Args:
        model: the model to fill.
        part: the part of ``parts`` to load.
        checkpoint: a checkpoint folder, a run directory or its ``checkpoints/`` folder.
        parts: the registry naming ``part``; default ``Parts(model)`` (one part per top-level child).
        source_part: the part's name in the checkpoint, when it differs from ``part``.
        which: for a run directory, ``"best"`` (default: the checkpoint with the best dev-set
            score; the latest when the run keeps no best, i.e. trained without ``best_metric``) or
            ``"latest"``. Ignored for a checkpoint folder.

    Returns:
        The tensor names loaded.

    Examples:
        >>> import tempfile
        >>> from partwise._run._checkpoint import save_checkpoint
        >>> def net():
        ...     m = nn.Sequential(); m.add_module("enc", nn.Linear(2, 2)); m.add_module("dec", nn.Linear(2, 2))
        ...     return m
        >>> a, b = net(), net()
        >>> ckpt = save_checkpoint(tempfile.mkdtemp(), "step-1", a, Parts(a), {}, {})
        >>> load_part(b, "enc", ckpt)
        ['enc.weight', 'enc.bias']
        >>> bool((a.enc.weight == b.enc.weight).all()), bool((a.dec.weight == b.dec.weight).all())
        (True, False)
    """
    parts = Parts(model) if parts is None else parts
    if parts.model is not model:
        raise PartError("load_part(): parts was built for another model; pass Parts(model) or leave it out")
    if part not in parts:
        raise PartError(f"load_part(): the model has no part {part!r}; its parts are {parts.names}")
    if which not in POINTERS:
        raise ValueError(f"load_part(): which={which!r} must be 'best' or 'latest'")
    try:
        ckpt = resolve_checkpoint(Path(checkpoint), best_or_latest(Path(checkpoint)) if which == "best" else which)
    except CheckpointNotFound as e:
        raise CheckpointNotFound(f"load_part(): {e}") from None
    stored_name = source_part or part
    files: dict[str, str] = read_meta(ckpt)["parts"]
    if stored_name not in files:
        hint = "" if source_part else "; pass source_part= to load a part saved under another name"
        raise CheckpointError(f"load_part(): checkpoint {str(ckpt)!r} has no part {stored_name!r}; it has "
                              f"{sorted(files)}{hint}")
    current = part_tensors(model, parts).get(part, {})
    loaded = read_part(ckpt, files[stored_name])
    problems = tensor_problems(loaded, current, current, dict.fromkeys(current, part), f"part {part!r}")
    if problems:
        raise mismatch_error(f"load_part(): part {stored_name!r} of {str(ckpt)!r} does not fit part {part!r} of "
                             "the model", problems, "load it into the part it was saved from")
    with torch.no_grad():
        for key, t in loaded.items():
            current[key].copy_(t)
    return list(current)
