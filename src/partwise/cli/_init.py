"""``init:`` in a recipe: a new run's parts start from parts of another run or checkpoint.

.. code-block:: yaml

    init:
      encoder: {from: runs/words, checkpoint: best}            # the same part of another run
      decoder: {from: runs/x/checkpoints/step-00000900, part: decoder, vocab: same}

``from`` is a run directory (then ``checkpoint: best | latest`` is required: which one is your
choice, never a silent default) or a checkpoint folder. ``part`` is the part's name there (default:
the same). Only a new run (``train``) is initialised; ``resume``, ``eval`` and ``predict`` load the
run's own checkpoint.

Vocabularies: tensors indexed by token — ``nn.Embedding`` weights and the weight and bias of an
``nn.Linear`` whose outputs are a vocabulary — are checked against the source run's saved
vocabularies (its ``artifacts.json``). Equal: the part loads as it is (:func:`partwise.load_part`).
Different, with ``vocab: remap`` (default): rows are moved by token with
:func:`partwise.transfer_state`'s ``vocab_map`` (tokens new to the run get the mean row), and the run
log says how many. ``vocab: same``, a source without saved vocabularies, or a tensor whose size no
vocabulary explains: refused, with the reason, before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._errors import CheckpointError, CheckpointNotFound, ConfigError
from .._model._parts import Parts
from .._run._checkpoint import part_tensors, read_meta, read_part, resolve_checkpoint
from .._run._layout import META
from .._run._runfolder import BadFileError, RunFolder
from .._run._surgery import load_part, transfer_state
from ..recipe import InitConfig, Recipe

__all__ = ["init_problems", "init_part_problems", "apply_init"]

DOCS = "docs/guides/retargeting.md, 'Starting from another run'"


@dataclass(frozen=True)
class _Source:
    ckpt: Path
    run_dir: Path | None
    label: str  # "runs/x (best checkpoint, step 1004)"


def _source(part: str, spec: InitConfig) -> _Source:
    where, p = f"init.{part}", Path(spec.from_)
    if (p / META).is_file():
        if spec.checkpoint is not None:
            raise ConfigError([f"{where}.checkpoint: {spec.from_!r} is a checkpoint folder itself; leave checkpoint "
                               "out, or give the run directory with checkpoint: best or latest"])
        run = p.parent.parent if RunFolder(p.parent.parent).holds_run_files() else None
        return _Source(p, run, f"{spec.from_} (step {_step(p)})")
    if not p.is_dir():
        raise ConfigError([f"{where}.from: {spec.from_!r} {'is not a folder' if p.exists() else 'not found'}; give a "
                           f"partwise run directory or a checkpoint folder ({DOCS})"])
    if not RunFolder(p).checkpoints.is_dir():
        raise ConfigError([f"{where}.from: {spec.from_!r} is not a partwise run directory (no checkpoints/); give a "
                           f"run written by `partwise train` or a checkpoint folder ({DOCS})"])
    if spec.checkpoint is None:
        raise ConfigError([f"{where}.checkpoint: required when from is a run directory; choose best (the best "
                           "dev-set score) or latest"])
    try:
        ckpt = resolve_checkpoint(p, spec.checkpoint)
    except CheckpointNotFound:
        other = "latest" if spec.checkpoint == "best" else "best"
        why = " (it kept none: training.best_metric was null)" if spec.checkpoint == "best" else ""
        raise ConfigError([f"{where}.checkpoint: run {spec.from_!r} has no {spec.checkpoint} checkpoint{why}; "
                           f"use checkpoint: {other}"]) from None
    return _Source(ckpt, p, f"{spec.from_} ({spec.checkpoint} checkpoint, step {_step(ckpt)})")


def _step(ckpt: Path) -> Any:
    try:
        return read_meta(ckpt).get("step", "?")
    except CheckpointError:
        return "?"


def init_problems(recipe: Recipe, kind: Any = None) -> list[str]:
    """Every problem of ``init:`` that shows without the new run's model: sources, checkpoints, parts there."""
    out: list[str] = []
    for part, spec in (recipe.init or {}).items():
        try:
            src = _source(part, spec)
            parts = read_meta(src.ckpt)["parts"]
        except (ConfigError, CheckpointError) as e:
            out += e.errors if isinstance(e, ConfigError) else [f"init.{part}.from: {e}"]
            continue
        name = spec.part or part
        if name not in parts:
            key = "part" if spec.part else "from"
            out.append(f"init.{part}.{key}: {src.label} has no part {name!r}; its parts are {sorted(parts)}"
                       + ("" if spec.part else "; name the source's part with init.<part>.part"))
    return out


def init_part_problems(recipe: Recipe, names: list[str]) -> list[str]:
    """``init:`` names parts of the new run's model."""
    return [f"init.{p}: unknown part; this run's parts are {names}" for p in (recipe.init or {}) if p not in names]


def _vocabularies(artifacts: dict[str, Any] | None) -> dict[str, list[str]]:
    """Every vocabulary a run saved (``{"tokens": [...]}`` entries of its ``artifacts.json``)."""
    return {k: list(v["tokens"]) for k, v in (artifacts or {}).items()
            if isinstance(v, dict) and isinstance(v.get("tokens"), list)}


def _vocab_indexed(model: nn.Module) -> set[str]:
    """Names of tensors whose rows are tokens: embedding tables, and output layers' weights and biases."""
    out = set()
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, nn.Embedding):
            out.add(f"{prefix}weight")
        elif isinstance(module, nn.Linear):
            out |= {f"{prefix}weight", f"{prefix}bias"}
    return out


def _pairs(old: dict[str, list[str]], new: dict[str, list[str]]) -> list[tuple[str, list[str], list[str]]]:
    same = [(k, old[k], new[k]) for k in new if k in old]
    return same or [(f"{a}->{b}", old[a], new[b]) for a in old for b in new]


def apply_init(recipe: Recipe, model: nn.Module, parts: Parts, artifacts: dict[str, Any]) -> list[str]:
    """Load every ``init:`` part into ``model``; returns one line per part for the run log.

    ``artifacts``: the new run's (its vocabularies). Raises :class:`~partwise.ConfigError` naming the
    part and the reason when a source does not fit; then nothing is loaded into that part.
    """
    lines = []
    for part, spec in (recipe.init or {}).items():
        src = _source(part, spec)
        lines.append(_init_one(part, spec, src, model, parts, artifacts))
    return lines


def _init_one(part: str, spec: InitConfig, src: _Source, model: nn.Module, parts: Parts,
              artifacts: dict[str, Any]) -> str:
    where, name = f"init.{part}", spec.part or part
    head = f"init {part} <- part {name!r} of {src.label}"
    files = read_meta(src.ckpt)["parts"]
    loaded = read_part(src.ckpt, files[name])
    current = part_tensors(model, parts).get(part, {})
    if set(loaded) != set(current):
        extra, missing = sorted(set(loaded) - set(current)), sorted(set(current) - set(loaded))
        raise ConfigError([f"{where}: part {name!r} of {src.label} does not fit part {part!r}: tensors only there "
                           f"{extra[:3]}, only here {missing[:3]}; start it from a part of the same model"])
    indexed = _vocab_indexed(model)
    old_vocabs, new_vocabs = _vocabularies(_read_artifacts(src.run_dir)), _vocabularies(artifacts)
    pairs = _pairs(old_vocabs, new_vocabs)
    vocab_map: dict[str, tuple[list[str], list[str]]] = {}
    problems, equal_used = [], False
    for key, t in loaded.items():
        cur = current[key]
        if key not in indexed:
            if t.shape != cur.shape:
                problems.append(f"{key}: shape {tuple(t.shape)} there, {tuple(cur.shape)} here")
            continue
        fits = [(k, o, n) for k, o, n in pairs if len(o) == t.shape[0] and len(n) == cur.shape[0]]
        if not old_vocabs:
            if t.shape != cur.shape:
                problems.append(f"{key}: shape {tuple(t.shape)} there, {tuple(cur.shape)} here")
            elif any(len(n) == cur.shape[0] for n in new_vocabs.values()):  # rows are tokens: unknown which
                problems.append(f"{key}: cannot check its rows against the vocabulary: {src.label} has no saved "
                                "vocabularies (artifacts.json); give the run directory")
            continue
        if not fits:
            if t.shape != cur.shape:
                problems.append(f"{key}: {t.shape[0]} rows there, {cur.shape[0]} here, and no saved vocabulary "
                                "has those sizes")
            continue
        if len({(tuple(o), tuple(n)) for _, o, n in fits}) > 1:
            problems.append(f"{key}: its rows could be any of the vocabularies {[k for k, _, _ in fits]}")
            continue
        _, old, new = fits[0]
        if old == new:
            equal_used = True
        else:
            vocab_map[key] = (old, new)
    if problems:
        raise ConfigError([f"{where}: refused: part {name!r} of {src.label} does not fit part {part!r}: "
                           + "; ".join(problems)])
    if not vocab_map:
        load_part(model, part, src.ckpt, parts, source_part=name)
        how = "vocabulary equal" if equal_used else "no vocabulary-indexed tensors"
        return f"{head}: {len(loaded)} tensors loaded ({how})"
    if spec.vocab == "same":
        key, (old, new) = next(iter(vocab_map.items()))
        raise ConfigError([f"{where}: refused: the source vocabulary of {key} differs from this run's "
                           f"({_diff(old, new)}); set {where}.vocab: remap to move its rows by token, or use the "
                           "source run's data"])
    with torch.no_grad():
        report = transfer_state(loaded, model, vocab_map=vocab_map, strict_shapes=True)
    moved = "; ".join(f"{key}: {_diff(old, new)}" for key, (old, new) in vocab_map.items())
    return f"{head}: {len(report.copied)} tensors loaded; vocabulary differs, rows remapped by token ({moved})"


def _diff(old: list[str], new: list[str]) -> str:
    fresh = [t for t in new if t not in set(old)]
    gone = len(set(old) - set(new))
    shown = ", ".join(repr(t) for t in fresh[:5]) + (", ..." if len(fresh) > 5 else "")
    return (f"{len(new)} tokens here vs {len(old)} there: {len(fresh)} new (mean row{': ' + shown if fresh else ''}), "
            f"{gone} gone")


def _read_artifacts(run_dir: Path | None) -> dict[str, Any] | None:
    if run_dir is None:
        return None
    try:
        return RunFolder(run_dir).read_artifacts()
    except BadFileError:
        return None  # reported where the source run is checked
