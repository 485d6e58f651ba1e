"""Export: a model back into a ``from_pretrained`` directory (a run's checkpoint: ``partwise export``)."""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._errors import PartError

__all__ = ["export"]


def _ties(model: nn.Module) -> set[frozenset[str]]:
    """The groups of parameter names that reach one tensor (``remove_duplicate=False``)."""
    by_tensor: dict[int, set[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        by_tensor.setdefault(id(p), set()).add(name)
    return {frozenset(names) for names in by_tensor.values() if len(names) > 1}


def _pairs(groups: set[frozenset[str]]) -> set[tuple[str, str]]:
    return {(a, b) for g in groups for a in g for b in g if a < b}


def _reload(model: nn.Module, out: Path) -> nn.Module:
    cls: Any = type(model)  # a Hugging Face PreTrainedModel class
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]  # "both present with different values, NOT tied" is what untie wants
    try:
        return cls.from_pretrained(out, local_files_only=True)
    finally:
        hf_logging.set_verbosity(level)


def _check_values(model: nn.Module, again: nn.Module, out: Path) -> None:
    theirs = again.state_dict()
    ours = model.state_dict()
    problems = [k for k in ours if k not in theirs or not torch.equal(ours[k].cpu(), theirs[k].cpu())]
    if problems:
        raise RuntimeError(f"export to {str(out)!r} does not reload identically: {', '.join(problems[:5])} differ")


def _flag_can_be_off(model: nn.Module) -> bool:
    """Whether the model's config keeps ``tie_word_embeddings=False`` through a save and a load."""
    config: Any = getattr(model, "config", None)
    if config is None or not hasattr(config, "tie_word_embeddings"):
        return False
    again = type(config).from_dict({**config.to_dict(), "tie_word_embeddings": False})
    return getattr(again, "tie_word_embeddings", True) is False


def _save(model: nn.Module, out: Path, *, ties_off: bool) -> None:
    hf: Any = model
    if not ties_off:
        hf.save_pretrained(out)
        return
    # every tensor written under every name, and no tie on reload: the untied copies stay apart
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    before = hf.config.tie_word_embeddings
    hf.config.tie_word_embeddings = False
    try:
        hf.save_pretrained(out, state_dict=state)
    finally:
        hf.config.tie_word_embeddings = before


def _write(model: nn.Module, tmp: Path, check: bool) -> None:
    """Save into ``tmp``; with ``check``, reload and require equal tensors and no tie the model does not have."""
    _save(model, tmp, ties_off=False)
    if not check:
        return
    ours = _pairs(_ties(model))
    again = _reload(model, tmp)
    retied = _pairs(_ties(again)) - ours
    if retied:
        name = type(model).__name__
        a, b = sorted(retied)[0]
        if not _flag_can_be_off(model):
            raise PartError(
                f"export: {name}.from_pretrained would tie {a} and {b} again (its config always ties word "
                "embeddings) because the untied copies still hold equal values; train the untied part "
                "before exporting, or do not untie it")
        for f in tmp.iterdir():
            f.unlink()
        _save(model, tmp, ties_off=True)
        again = _reload(model, tmp)
        kept_apart = ours - _pairs(_ties(again))
        if kept_apart:
            warnings.warn(
                f"export: {name}.from_pretrained ties its embeddings all together or not at all; the export "
                f"keeps the untied copies apart (tie_word_embeddings=False), so {', '.join(sorted(kept_apart)[0])} "
                "and the other still-shared tensors reload as separate equal copies", stacklevel=3)
    elif _pairs(_ties(again)) != ours:
        missing = sorted(ours - _pairs(_ties(again)))[0]
        warnings.warn(f"export: {', '.join(missing)} are shared in the model but reload as separate equal copies",
                      stacklevel=3)
    _check_values(model, again, tmp)


def export(model: nn.Module, out_dir: str | Path, *, check: bool = True, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` with ``save_pretrained`` into ``out_dir`` (created; must be empty or absent).

    With ``check`` the directory is loaded back with the model's own class and every parameter and
    buffer compared, and the reloaded model must not tie tensors the model keeps apart: untied tensors
    (see :func:`partwise.untie`) stay untied, also while their values are still equal (the config is
    saved with ``tie_word_embeddings=False`` where that is needed and the class allows it; a class whose
    config always ties, such as T5, is refused then). The directory is written beside ``out_dir`` and
    renamed into place only when complete. ``extra`` is written as ``partwise.json`` (where the
    weights came from, vocabularies).

    >>> import tempfile
    >>> from transformers import T5Config, T5ForConditionalGeneration
    >>> model = T5ForConditionalGeneration(T5Config(vocab_size=32, d_model=8, d_kv=4, d_ff=16,
    ...                                             num_layers=1, num_heads=2))
    >>> out = export(model, tempfile.mkdtemp() + "/t5")
    >>> sorted(p.name for p in out.iterdir())
    ['config.json', 'generation_config.json', 'model.safetensors']
    """
    from transformers.utils import logging as hf_logging

    if not callable(getattr(model, "save_pretrained", None)):
        raise TypeError(f"export needs a Hugging Face model (with save_pretrained), got {type(model).__name__}")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"export: {str(out)!r} exists and is not an empty directory; choose a new OUT_DIR")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    progress = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    try:
        _write(model, tmp, check)
        if extra:
            (tmp / "partwise.json").write_text(json.dumps(extra, indent=2, sort_keys=True), encoding="utf-8")
        if out.exists():
            out.rmdir()  # empty, checked above
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
        if progress:
            hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]
    return out
