"""The ``partwise`` subcommands: train, resume, eval, predict, inspect (``demo`` is in ``_demo``)."""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import yaml

from .. import _checkpoint
from .._errors import ConfigError
from .._trainer import Trainer
from . import _build as build
from ._config import Recipe, dump, load_recipe, validate
from ._kinds import KindData, get_kind

__all__ = ["train", "resume", "evaluate", "predict", "inspect", "run_recipe", "format_metrics"]

PERCENT = ("wer", "per", "acc")


def _say(*args: Any) -> None:
    print(*args, flush=True)


def format_metrics(metrics: dict[str, Any]) -> str:
    """``wer 27.1%  per 6.2%  loss 0.2345`` — rates as percentages."""
    out = []
    for k, v in metrics.items():
        if isinstance(v, float):
            out.append(f"{k} {v:.2%}" if any(t in k for t in PERCENT) else f"{k} {v:.4g}")
        else:
            out.append(f"{k} {v}")
    return "  ".join(out)


def _prepare_run_dir(run_dir: Path, overwrite: bool) -> None:
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise ConfigError([f"run_dir: {str(run_dir)!r} exists and is not empty; pass --overwrite to replace it, "
                               f"`partwise resume {run_dir}` to continue it, or set run_dir=... to another path"])
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)


def _callbacks(recipe: Recipe, run_dir: Path, total: int, resume_step: int | None) -> list[Any]:
    from ._progress import ProgressBar
    from ._runlog import RunLog

    log = RunLog(run_dir, tensorboard=recipe.training.tensorboard)
    if resume_step is not None:
        log.truncate_after(resume_step)
    return [ProgressBar(total_steps=total, items_per_step=recipe.training.batch_size), log]


def _device_batches(loader: Iterable[Any] | None, device: torch.device) -> Iterable[Any]:
    from .._loader import move_to

    return (move_to(b, device) for b in (loader or []))


def run_recipe(recipe: Recipe, run_dir: Path, *, resume: bool = False, max_steps: int | None = None,
               title: str = "partwise run", allow_plan_change: bool = False) -> dict[str, Any]:
    """Build everything from a validated recipe and train (or continue) it; returns the summary."""
    kind = get_kind(recipe.task.name)
    if recipe.training.threads:
        torch.set_num_threads(recipe.training.threads)
    data = kind.load_data(recipe, build.load_artifacts(run_dir) if resume else None)
    model = kind.build_model(recipe, data)
    parts = build.build_parts(recipe, model)
    plan = build.build_plan(recipe, parts)
    task = kind.build_task(recipe, data)
    if not resume:
        _checkpoint.write_text_atomic(run_dir / "config.yaml", dump(recipe))
        build.save_artifacts(run_dir, kind.artifacts(data))
    train_loader, dev_loader = kind.loaders(recipe, data)
    trainer = Trainer(model, parts, plan, task, run_dir=run_dir, **build.trainer_kwargs(recipe))
    start = _checkpoint.read_meta(_checkpoint.resolve_checkpoint(run_dir))["step"] if resume else None
    trainer.callbacks = _callbacks(recipe, run_dir, plan.total_steps(len(train_loader) // recipe.training.grad_accum), start)
    _say(parts.table())
    t0 = time.perf_counter()
    try:
        trainer.fit(train_loader, dev_loader, resume=run_dir if resume else None, max_steps=max_steps,
                    max_minutes=recipe.training.max_minutes, allow_plan_change=allow_plan_change)
    finally:
        for cb in trainer.callbacks:
            cb.close()  # flush the last step rows and TensorBoard, clear the bar
    minutes = (time.perf_counter() - t0) / 60
    which = "best" if (run_dir / "checkpoints" / "best").exists() else "latest"
    _checkpoint.load_weights(model, parts, _checkpoint.resolve_checkpoint(run_dir, which))
    model.eval()
    dev = task.evaluate(model, _device_batches(kind.eval_loader(recipe, data.dev), trainer.device), data.dev)
    summary = {"checkpoint": which, "steps": trainer.step, "training minutes": round(minutes, 2),
               **{f"dev {k}": v for k, v in dev.items()}}
    plots = _plots(run_dir)
    from ._report import write_report

    report = write_report(run_dir, title, summary, plots)
    _say(f"dev: {format_metrics(dev)}  ({which} checkpoint, {trainer.step} steps, {minutes:.1f} min)")
    _say(f"run directory: {run_dir}  (report: {report}; plots: {', '.join(p.name for p in plots) or 'none'})")
    return {**summary, "dev": dev}


def _plots(run_dir: Path) -> list[Path]:
    try:
        from ._plots import make_plots

        return make_plots(run_dir)
    except (ImportError, ValueError) as e:
        _say(f"(plots skipped: {e})")
        return []


def _semantic_check(recipe: Recipe) -> None:
    """Checks before the run directory is touched: the kind's own, then model, parts and plan on a
    stand-in model when the kind can build one without reading data (``model_for_check``)."""
    kind = get_kind(recipe.task.name)
    kind.check(recipe)
    if hasattr(kind, "model_for_check"):
        build.build_plan(recipe, build.build_parts(recipe, kind.model_for_check(recipe)))


def train(recipe_path: str, overrides: list[str], overwrite: bool, max_steps: int | None) -> int:
    recipe, _ = load_recipe(recipe_path, overrides)
    _semantic_check(recipe)
    run_dir = Path(recipe.run_dir)
    _prepare_run_dir(run_dir, overwrite)
    run_recipe(recipe, run_dir, max_steps=max_steps, title=f"partwise train {recipe_path}")
    return 0


def _run_config(run_dir: Path) -> Recipe:
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise ConfigError([f"{str(run_dir)!r} is not a run directory (no config.yaml); give the run_dir of `partwise train`"])
    return validate(yaml.safe_load(path.read_text(encoding="utf-8")), str(path))


def resume(run_dir: str, max_steps: int | None, allow_plan_change: bool = False) -> int:
    path = Path(run_dir)
    recipe = _run_config(path)
    _checkpoint.resolve_checkpoint(path)  # a clear error when there is nothing to resume
    run_recipe(recipe, path, resume=True, max_steps=max_steps, title=f"partwise resume {run_dir}",
               allow_plan_change=allow_plan_change)
    return 0


def load_run(run_dir: Path, which: str = "best") -> tuple[Recipe, Any, Any, KindData, Any]:
    """A trained run's recipe, kind, model (weights of its best or latest checkpoint, eval mode), data."""
    recipe = _run_config(run_dir)
    kind = get_kind(recipe.task.name)
    data = kind.load_data(recipe, build.load_artifacts(run_dir))
    model = kind.build_model(recipe, data)
    parts = build.build_parts(recipe, model)
    try:
        ckpt = _checkpoint.resolve_checkpoint(run_dir, which)
    except FileNotFoundError:
        ckpt = _checkpoint.resolve_checkpoint(run_dir, "latest")
    _checkpoint.load_weights(model, parts, ckpt)
    return recipe, kind, model.eval(), data, parts


def evaluate(run_dir: str, split: str, beam_size: int | None) -> int:
    recipe, kind, model, data, _ = load_run(Path(run_dir))
    dataset = getattr(data, split)
    if dataset is None:
        raise ConfigError([f"--split {split}: this run's data has no {split} split"])
    task = kind.build_task(recipe, data)
    if beam_size:
        task.beam_size = beam_size
    t0 = time.perf_counter()
    scores = task.evaluate(model, kind.eval_loader(recipe, dataset), dataset)
    _say(f"{split}: {format_metrics(scores)}  ({len(dataset):,} items, {time.perf_counter() - t0:.1f} s)")
    return 0


def predict(run_dir: str, words: list[str], file: str | None, beam_size: int | None) -> int:
    recipe, kind, model, data, _ = load_run(Path(run_dir))
    if not hasattr(kind, "predict"):
        raise ConfigError([f"predict: runs of task {recipe.task.name!r} have no word predictions"])
    if file == "-" or (not words and file is None and not sys.stdin.isatty()):
        words = words + [w.strip() for w in sys.stdin if w.strip()]
    elif file is not None:
        source = Path(file)
        if not source.is_file():
            raise ConfigError([f"--file: {file!r} not found"])
        words = words + [w.strip() for w in source.read_text(encoding="utf-8").splitlines() if w.strip()]
    if not words:
        raise ConfigError(["no words given: pass words as arguments, --file FILE, or pipe them on stdin"])
    for word, out in zip(words, kind.predict(recipe, model, data, words, beam_size), strict=True):
        _say(f"{word}\t{out}")
    return 0


def inspect(recipe_path: str, overrides: list[str]) -> int:
    recipe, _ = load_recipe(recipe_path, overrides)
    kind = get_kind(recipe.task.name)
    kind.check(recipe)
    data = kind.load_data(recipe, None)
    model = kind.build_model(recipe, data)
    parts = build.build_parts(recipe, model)
    plan = build.build_plan(recipe, parts)
    train_loader, _ = kind.loaders(recipe, data)
    steps = len(train_loader) // recipe.training.grad_accum
    _say(f"task: {recipe.task.name}; model: {recipe.model.name} ({sum(p.numel() for p in model.parameters()):,} "
         f"parameters); data: {recipe.data.name}, {len(data.train):,} training rows, {steps:,} steps per epoch")
    _say(parts.table())
    _say(plan.describe(parts, steps_per_epoch=steps))
    return 0
