"""``partwise export RUN_DIR OUT_DIR``: a run trained with ``model: {name: hf}`` back into a
``from_pretrained`` directory."""

from __future__ import annotations

from pathlib import Path

from .._errors import ConfigError
from .._run._runfolder import RunFolder
from ..tasks._hf_models import require_transformers
from ._commands import load_run

__all__ = ["export_run", "export_command"]


def export_run(run_dir: str | Path, out_dir: str | Path, which: str = "best", check: bool = True) -> Path:
    """Export the ``best`` (or ``latest``) checkpoint of a run trained with ``model: {name: hf}``."""
    from ..hf import export

    run = Path(run_dir)
    recipe, _, model, _, _ = load_run(run, which)
    if not callable(getattr(model, "save_pretrained", None)):
        raise TypeError(f"the model of run {str(run)!r} is {recipe.model.name!r}, not a Hugging Face model "
                        "(model: {name: hf})")
    artifacts = RunFolder(run).read_artifacts()
    return export(model, out_dir, check=check, extra={"run_dir": str(run), "checkpoint": which, **artifacts})


def export_command(run_dir: str, out_dir: str, which: str) -> int:
    """``partwise export RUN_DIR OUT_DIR``: the run's model as a ``from_pretrained`` directory."""
    require_transformers()
    try:
        out = export_run(run_dir, out_dir, which=which)
    except (FileExistsError, TypeError, RuntimeError) as e:
        raise ConfigError([f"export: {e}"]) from None
    print(f"exported {run_dir} ({which} checkpoint) to {out}; load it with "
          f"AutoModelForSeq2SeqLM.from_pretrained({str(out)!r})", flush=True)
    return 0
