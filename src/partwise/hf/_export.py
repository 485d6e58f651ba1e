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
from .._model._untie import _names_by_tensor

__all__ = ["export"]


def _ties(model: nn.Module) -> set[tuple[str, str]]:
    """Every pair of parameter names that reach one tensor."""
    return {(a, b) for _, names in _names_by_tensor(model).values() for a in names for b in names if a < b}


def _reload(model: nn.Module, out: Path) -> nn.Module:
    cls: Any = type(model)  # a Hugging Face PreTrainedModel class
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]  # "both present, different values: NOT tied"
    try:
        return cls.from_pretrained(out, local_files_only=True)
    finally:
        hf_logging.set_verbosity(level)


def _check_reload(model: nn.Module, out: Path) -> None:
    """Load ``out`` with the model's own class: every tensor equal, and no tie the model does not have."""
    again = _reload(model, out)
    retied = sorted(_ties(again) - _ties(model))
    if retied:
        raise PartError(f"export to {str(out)!r}: {type(model).__name__}.from_pretrained ties {retied[0][0]} and "
                        f"{retied[0][1]}, which the model keeps apart; export with check=False at your own risk")
    theirs = again.state_dict()
    ours = model.state_dict()
    problems = [k for k in ours if k not in theirs or not torch.equal(ours[k].cpu(), theirs[k].cpu())]
    if problems:
        raise RuntimeError(f"export to {str(out)!r} does not reload identically: {', '.join(problems[:5])} differ")


def _retied_on_load(model: nn.Module) -> list[tuple[str, str]]:
    """The pairs ``from_pretrained`` would tie again: in the tie mapping of a fresh model of this class
    and config (built on the meta device: no memory), kept apart in ``model``, with equal values
    (transformers ties equal tensors while the config's tie flag is on)."""
    hf: Any = model
    try:
        config = type(hf.config).from_dict(hf.config.to_dict())
        with torch.device("meta"):
            fresh: Any = type(hf)(config)
        mapping = fresh.get_expanded_tied_weights_keys(all_submodels=True)
    except Exception:  # noqa: BLE001 - an unusual class: the reload check still sees a re-tie
        return []
    params = dict(model.named_parameters(remove_duplicate=False))
    return sorted((t, s) for t, s in mapping.items() if t in params and s in params
                  and params[t] is not params[s] and torch.equal(params[t], params[s]))


def _flag_can_be_off(model: nn.Module) -> bool:
    """Whether the model's config keeps ``tie_word_embeddings=False`` through a save and a load."""
    config: Any = getattr(model, "config", None)
    if config is None or not hasattr(config, "tie_word_embeddings"):
        return False
    again = type(config).from_dict({**config.to_dict(), "tie_word_embeddings": False})
    return getattr(again, "tie_word_embeddings", True) is False


def _save(model: nn.Module, out: Path) -> None:
    """``save_pretrained``; untied copies that reloading would tie again are kept apart by saving with
    ``tie_word_embeddings=False`` and every tensor under every name (refused where the config always ties)."""
    hf: Any = model
    retied = _retied_on_load(model)
    if not retied:
        hf.save_pretrained(out)
        return
    name, (a, b) = type(model).__name__, retied[0]
    if not _flag_can_be_off(model):
        raise PartError(f"export: {name}.from_pretrained would tie {a} and {b} again (its config always ties word "
                        "embeddings) because the untied copies still hold equal values; train the untied part "
                        "before exporting, or do not untie it")
    still_shared = sorted(_ties(model))
    if still_shared:
        warnings.warn(f"export: {name}.from_pretrained ties its embeddings all together or not at all; the export "
                      f"keeps the untied copies apart (tie_word_embeddings=False), so {', '.join(still_shared[0])} "
                      "and the other still-shared tensors reload as separate equal copies", stacklevel=4)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    before = hf.config.tie_word_embeddings
    hf.config.tie_word_embeddings = False
    try:
        hf.save_pretrained(out, state_dict=state)
    finally:
        hf.config.tie_word_embeddings = before


def export(model: nn.Module, out_dir: str | Path, *, check: bool = True, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` with ``save_pretrained`` into ``out_dir`` (created; must be empty or absent).

    With ``check`` the directory is loaded back with the model's own class and every parameter and
    buffer compared, and the reloaded model must not tie tensors the model keeps apart: untied tensors
    (see :func:`partwise.untie`) stay untied, also while their values are still equal (the config is
    saved with ``tie_word_embeddings=False`` where that is needed and the class allows it; a class whose
    config always ties, such as T5, is refused then). The directory is written beside ``out_dir`` and
    renamed into place only when complete. ``extra`` is written as ``partwise.json`` (where the
    weights came from, vocabularies).

    Examples:
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
        _save(model, tmp)
        if check:
            _check_reload(model, tmp)
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
