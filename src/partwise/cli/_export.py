"""``partwise export RUN_DIR OUT_DIR``: a run trained with ``model: {name: hf}`` back into a
``from_pretrained`` directory."""

from __future__ import annotations

from pathlib import Path

from .._errors import ConfigError
from .._run._runfolder import RunFolder
from ..tasks._hf_models import require_transformers
from ._commands import load_run

__all__ = ["export_run", "export_command"]


def export_run(run_dir: str | Path, out_dir: str | Path, which: str = "best", check: bool = True,
               adapter: bool = False) -> Path:
    """Export the ``best`` (or ``latest``) checkpoint of a run trained with ``model: {name: hf}``; a run
    with ``adapters:`` is exported with its adapters merged into the base weights, or (``adapter``) as
    a PEFT adapter folder."""
    from ..hf import export

    run = Path(run_dir)
    recipe, _, model, _, _ = load_run(run, which)
    if not callable(getattr(model, "save_pretrained", None)):
        raise TypeError(f"the model of run {str(run)!r} is {recipe.model.name!r}, not a Hugging Face model "
                        "(model: {name: hf})")
    if adapter and recipe.adapters is None:
        raise TypeError(f"--adapter: run {str(run)!r} was trained without adapters (export it without --adapter)")
    if recipe.adapters is not None:
        from ..peft import merge, save_adapter

        if adapter:
            return save_adapter(model, out_dir)
        merge(model)
    artifacts = RunFolder(run).read_artifacts()
    return export(model, out_dir, check=check, extra={"run_dir": str(run), "checkpoint": which, **artifacts})


def export_command(run_dir: str, out_dir: str, which: str, adapter: bool = False) -> int:
    """``partwise export RUN_DIR OUT_DIR``: the run's model as a ``from_pretrained`` directory."""
    require_transformers()
    try:
        out = export_run(run_dir, out_dir, which=which, adapter=adapter)
    except (FileExistsError, TypeError, RuntimeError) as e:
        raise ConfigError([f"export: {e}"]) from None
    how = (f"PeftModel.from_pretrained(base_model, {str(out)!r})" if adapter
           else f"AutoModelForSeq2SeqLM.from_pretrained({str(out)!r})")
    print(f"exported {run_dir} ({which} checkpoint) to {out}; load it with {how}", flush=True)
    return 0
