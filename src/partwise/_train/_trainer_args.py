"""The trainer's arguments, checked before any work: every problem found, reported at once."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from .._errors import ConfigError
from .._model._parts import REST
from .._run import _checkpoint as ckpt
from ._task import declared_metrics

if TYPE_CHECKING:
    from ._trainer import Trainer

__all__ = ["EarlyStopping", "device_for", "precision_problem", "clip_problems", "metric_problems", "option_problems",
           "check_fit", "DEVICE_FIX"]


class EarlyStopping:
    """Stop when ``metric`` has not improved for ``patience`` evaluations."""

    def __init__(self, metric: str = "loss", mode: str = "min", patience: int = 3):
        errors = []
        if not isinstance(metric, str) or not metric:
            errors.append(f"EarlyStopping metric={metric!r} must name a metric, e.g. 'loss'")
        if mode not in ("min", "max"):
            errors.append(f"EarlyStopping mode={mode!r} must be 'min' or 'max'")
        if not is_int(patience) or patience < 1:
            errors.append(f"EarlyStopping patience={patience!r} must be a whole number >= 1")
        if errors:
            raise ConfigError(errors)
        self.metric, self.mode, self.patience = metric, mode, patience


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_positive(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0


DEVICE_FIX = "use 'auto' (CUDA when available, else CPU), 'cpu', 'cuda' or 'cuda:N'"


def device_for(device: Any) -> tuple[torch.device | None, str | None]:
    """The torch device for ``device``, or a message saying why it cannot be used here (the one
    device rule: the Trainer and the recipe checks both use it)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu"), None
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        return None, f"device: {device!r} is not a device; {DEVICE_FIX}"
    if d.type == "cuda" and not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        return None, (f"device: {device!r} is not available on this machine (CUDA is not available: torch "
                      f"{torch.__version__}, {build}); {DEVICE_FIX}")
    available = getattr(getattr(torch, d.type, None), "is_available", None) or getattr(
        getattr(torch.backends, d.type, None), "is_available", None)
    if d.type != "cpu" and (available is None or not available()):
        return None, f"device: {device!r} is not available on this machine; {DEVICE_FIX}"
    if d.type == "cuda" and d.index is not None and d.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        return None, (f"device: {device!r} does not exist; this machine has {count} CUDA device(s) "
                      f"(cuda:0..cuda:{count - 1})")
    return d, None


def precision_problem(precision: Any, device: torch.device) -> str | None:
    """The one precision rule: fp16 (with its loss scaler) needs CUDA."""
    if precision == "fp16" and device.type != "cuda":
        return f"precision: 'fp16' needs CUDA, but training runs on {device.type!r}; use 'bf16' or 'fp32'"
    return None


def clip_problems(clip: Any, part_names: list[str]) -> list[str]:
    """The one gradient-clipping rule: ``None`` or ``0`` turns clipping off; a number > 0 is the max
    norm of all gradients together; a mapping gives parts their own max norm (each > 0; parts not in
    it are not clipped)."""
    if clip is None or (not isinstance(clip, Mapping) and not isinstance(clip, bool) and clip == 0):
        return []
    if not isinstance(clip, Mapping):
        return [] if is_positive(clip) else [f"grad_clip: {clip!r} must be a number > 0 (0 or None: no clipping) "
                                              "or a part -> max norm mapping"]
    out = [f"grad_clip.{p}: unknown part {p!r}; parts are {part_names}" for p in clip if p not in part_names]
    out += [f"grad_clip.{p}: {v!r} must be a number > 0 (leave the part out not to clip it)"
            for p, v in clip.items() if not is_positive(v)]
    return out


def option_problems(trainer: Trainer) -> list[str]:
    """Every argument of ``Trainer(...)`` that has a wrong type or value, one message each."""
    out = []
    if trainer.precision not in ("fp32", "bf16", "fp16"):
        out.append(f"precision: {trainer.precision!r} must be 'fp32', 'bf16' or 'fp16'")
    if trainer.on_nonfinite not in ("skip", "stop"):
        out.append(f"on_nonfinite: {trainer.on_nonfinite!r} must be 'skip' or 'stop'")
    for name in ("batch_size", "grad_accum"):
        if not is_int(getattr(trainer, name)) or getattr(trainer, name) < 1:
            out.append(f"{name}: {getattr(trainer, name)!r} must be a whole number >= 1")
    if trainer.save_every is not None and (not is_int(trainer.save_every) or trainer.save_every < 1):
        out.append(f"save_every: {trainer.save_every!r} must be a whole number >= 1, or None")
    if trainer.average_last is not None and (not is_int(trainer.average_last) or trainer.average_last < 2):
        out.append(f"average_last: {trainer.average_last!r} must be a whole number >= 2 (checkpoints averaged), "
                   "or None")
    elif trainer.average_last is not None and (trainer.run_dir is None or not trainer.best_metric):
        out.append("average_last: needs run_dir (the checkpoints it averages) and best_metric (the dev metric that "
                   "decides whether the average becomes best)")
    if trainer.checkpoint_parts not in ("all", "trained"):
        out.append(f"checkpoint_parts: {trainer.checkpoint_parts!r} must be 'all' or 'trained'")
    elif trainer.checkpoint_parts == "trained" and trainer.average_last is not None:
        out.append("checkpoint_parts: 'trained' checkpoints cannot be averaged (average_last averages whole "
                   "checkpoints); use 'all', or leave average_last out")
    if trainer.distributed not in ("ddp", "fsdp2"):
        out.append(f"distributed: {trainer.distributed!r} must be 'ddp' or 'fsdp2' (used under torchrun)")
    elif trainer.distributed == "fsdp2":
        if trainer.average_last is not None:
            out.append("average_last: not available with distributed='fsdp2' (averaging loads whole checkpoints "
                       "into the model); average the run's checkpoints afterwards with partwise.average_checkpoints")
        if trainer.precision == "fp16":
            out.append("precision: 'fp16' (with its loss scaler) is not available with distributed='fsdp2'; use 'bf16'")
    units = trainer.fsdp_units
    if isinstance(units, str) or not isinstance(units, Sequence) or not all(isinstance(u, str) and u for u in units):
        out.append(f"fsdp_units: {units!r} must be a list of module path patterns, e.g. ['encoder.layers.*']")
    if not is_int(trainer.seed):
        out.append(f"seed: {trainer.seed!r} must be a whole number")
    if trainer.cache_mode not in ("auto", "on", "off"):
        out.append(f"cache: {trainer.cache_mode!r} must be 'auto', 'on' or 'off'")
    if not isinstance(trainer.use_guard, bool):
        out.append(f"guard: {trainer.use_guard!r} must be True or False")
    if trainer.early_stopping is not None and not isinstance(trainer.early_stopping, EarlyStopping):
        out.append(f"early_stopping: {trainer.early_stopping!r} must be an EarlyStopping(metric, mode, patience)")
    bm = trainer.best_metric
    if bm is not None and not (isinstance(bm, tuple | list) and len(bm) == 2 and isinstance(bm[0], str)
                               and bm[1] in ("min", "max")):
        out.append(f"best_metric: {bm!r} must be (metric name, 'min' or 'max'), e.g. ('loss', 'min')")
    return out + _clip_problems(trainer) + _part_name_problems(trainer)


def _clip_problems(trainer: Trainer) -> list[str]:
    return clip_problems(trainer.grad_clip, trainer.parts.names)


def _part_name_problems(trainer: Trainer) -> list[str]:
    if trainer.run_dir is None:
        return []
    return [f"parts: {m}" for m in ckpt.part_file_problems([*trainer.parts.names, REST])]


def metric_problems(rules: Sequence[tuple[str, str]], declared: Sequence[str] | None, has_dev: bool,
                    task_name: str) -> list[str]:
    """The one rule for the metric ``best_metric`` and early stopping name (each ``(where, name)`` of
    ``rules``): ``train_loss``, or, with dev data, one the task declares it returns (``wer`` or
    ``dev_wer``); a task that declares none is checked at its first evaluation. The Trainer and the
    recipe checks both use it."""
    known = {"train_loss"} | ({f"dev_{m}" for m in declared or ()} if has_dev else set())
    out = []
    for where, name in rules:
        if name in known or f"dev_{name}" in known or (has_dev and declared is None):
            continue
        why = "no dev_data given" if not has_dev else f"task {task_name} returns {sorted(declared or ())}"
        out.append(f"{where}: metric {name!r} will not be produced ({why}); choose one of {sorted(known)}")
    return out


def _metric_problems(trainer: Trainer, has_dev: bool) -> list[str]:
    rules = [("best_metric", trainer.best_metric[0])] if trainer.best_metric else []
    rules += [("early_stopping.metric", trainer.early_stopping.metric)] if trainer.early_stopping else []
    return metric_problems(rules, declared_metrics(trainer.task), has_dev, type(trainer.task).__name__)


def check_fit(trainer: Trainer, dev_data: Any, max_steps: Any, max_minutes: Any) -> None:
    """What ``fit`` is given, checked before anything runs; all problems at once."""
    errors = _metric_problems(trainer, dev_data is not None)
    if max_steps is not None and (not is_int(max_steps) or max_steps < 0):
        errors.append(f"max_steps: {max_steps!r} must be a whole number >= 0, or None")
    if max_minutes is not None and not is_positive(max_minutes):
        errors.append(f"max_minutes: {max_minutes!r} must be a number > 0, or None")
    if errors:
        raise ConfigError(errors)
