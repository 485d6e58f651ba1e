"""Export: a model back into a ``from_pretrained`` directory (a run's checkpoint: ``partwise export``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["export"]


def _check_reload(model: nn.Module, out: Path) -> None:
    """Load ``out`` with the model's own class and require every tensor to be equal."""
    cls: Any = type(model)  # a Hugging Face PreTrainedModel class
    again = cls.from_pretrained(out, local_files_only=True)
    theirs = again.state_dict()
    ours = model.state_dict()
    problems = [k for k in ours if k not in theirs or not torch.equal(ours[k].cpu(), theirs[k].cpu())]
    if problems:
        raise RuntimeError(f"export to {str(out)!r} does not reload identically: {', '.join(problems[:5])} differ")


def export(model: nn.Module, out_dir: str | Path, *, check: bool = True, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` with ``save_pretrained`` into ``out_dir`` (created; must be empty or absent).

    With ``check`` the directory is loaded back with the model's own class and every parameter and
    buffer compared; untied tensors (see :func:`partwise.untie`) stay untied. ``extra`` is written as
    ``partwise.json`` (where the weights came from, vocabularies).

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
    out.mkdir(parents=True, exist_ok=True)
    hf: Any = model
    progress = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    try:
        hf.save_pretrained(out)
        if extra:
            (out / "partwise.json").write_text(json.dumps(extra, indent=2, sort_keys=True), encoding="utf-8")
        if check:
            _check_reload(model, out)
    finally:
        if progress:
            hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]
    return out
