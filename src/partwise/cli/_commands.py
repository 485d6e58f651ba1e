"""The ``partwise`` subcommands: train, resume, eval, predict, inspect (``demo`` is in ``_demo``).

Every command checks everything it can before it writes anything: ``train`` validates the recipe,
loads the data and builds model, plan and trainer before it creates (or replaces) the run directory;
``resume`` reads and checks the run's config, artifacts and checkpoint, and loads the checkpoint into
the model, before the logs are touched; ``eval`` and ``predict`` only read.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import _errors
from .._errors import ConfigError, PartError
from .._optim._plan import Plan
from .._run import _checkpoint, _failpoints
from .._run._layout import META
from .._run._runfolder import (
    BadFileError,
    Prior,
    RunFolder,
    check_weight_files,
    read_meta,
    read_state,
    read_yaml,
)
from .._train._trainer import Trainer
from ..data import DataFormatError
from ..recipe import KindData, Recipe, dump, get_kind
from . import _build as build
from ._checks import check_recipe
from ._config import load_recipe, validate
from ._guarantees import PhaseFacts, log_line
from ._init import apply_init

__all__ = ["train", "resume", "evaluate", "predict", "inspect", "run_recipe", "format_metrics", "load_run"]

PERCENT = ("wer", "per", "acc", "error")


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


# -- building a run from a recipe, writing nothing --------------------------------------------
@dataclass
class Built:
    """Everything a recipe makes, before anything is written: data, model, parts, plan, task, loaders."""

    recipe: Recipe
    kind: Any
    data: KindData
    model: Any
    parts: Any
    plan: Plan
    task: Any
    train_loader: Any
    dev_loader: Any
    steps_per_epoch: int
    init_log: list[str] = field(default_factory=list)  # what init: loaded (a new run only)

    @property
    def total_steps(self) -> int:
        return self.plan.total_steps(self.steps_per_epoch)


def build_run(recipe: Recipe, artifacts: dict[str, Any] | None = None, artifacts_path: Path | None = None) -> Built:
    """Load the data (with a run's saved ``artifacts``) and build everything; raises on any problem."""
    kind = get_kind(recipe.task.name, recipe.task.path)
    if recipe.training.threads:
        torch.set_num_threads(recipe.training.threads)
    data = _load_data(kind, recipe, artifacts, artifacts_path)
    init_log: list[str] = []
    model, parts = _model_and_parts(recipe, kind, data, new_run=artifacts is None, log=init_log)
    plan = build.build_plan(recipe, parts)
    task = kind.build_task(recipe, data)
    train_loader, dev_loader = kind.loaders(recipe, data)
    steps = len(train_loader) // recipe.training.grad_accum
    if steps < 1:
        raise ConfigError([f"training: {len(train_loader)} training batch(es) of {recipe.training.batch_size} make no "
                           f"optimizer step with grad_accum {recipe.training.grad_accum}; lower training.batch_size "
                           "or grad_accum, or give more training data"])
    return Built(recipe, kind, data, model, parts, plan, task, train_loader, dev_loader, steps, init_log)


def _model_and_parts(recipe: Recipe, kind: Any, data: KindData, new_run: bool,
                     log: list[str] | None = None) -> tuple[Any, Any]:
    """The kind's model and the recipe's parts. ``init:`` is applied before any adapter is added (the
    sources' tensors keep their names): for a new run, and for every run whose checkpoints hold only
    the trained parts (``training.checkpoint_parts: trained``: the rest comes from the init sources)."""
    model = kind.build_model(recipe, data)

    def init(base: Any) -> None:
        lines = apply_init(recipe, model, base, kind.artifacts(data))
        if log is not None:
            log.extend(lines)

    needed = bool(recipe.init) and (new_run or recipe.training.checkpoint_parts == "trained")
    return model, build.build_parts(recipe, model, init=init if needed else None)


def _load_data(kind: Any, recipe: Recipe, artifacts: dict[str, Any] | None, artifacts_path: Path | None) -> KindData:
    if artifacts is None:
        return kind.load_data(recipe, None)
    try:
        return kind.load_data(recipe, artifacts)
    except (ConfigError, DataFormatError, UnicodeDecodeError):
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        why = " ".join(f"{type(e).__name__}: {e}".split())[:120]
        raise BadFileError(f"{artifacts_path}: does not hold what task {recipe.task.name!r} saved ({why}); the file is "
                           "damaged: restore it from a backup or train the run again") from None


def make_trainer(built: Built, run_dir: Path) -> Trainer:
    return Trainer(built.model, built.parts, built.plan, built.task, run_dir=run_dir,
                   **build.trainer_kwargs(built.recipe))


def _device_batches(loader: Iterable[Any] | None, device: torch.device) -> Iterable[Any]:
    from .._train._loader import move_to

    return (move_to(b, device) for b in (loader or []))


# -- training and the report ------------------------------------------------------------------
def _fit_and_report(built: Built, trainer: Trainer, run_dir: Path, *, resume: Path | None, max_steps: int | None,
                    title: str, allow_plan_change: bool = False, allow_data_change: bool = False) -> dict[str, Any]:
    """Train (or continue from checkpoint ``resume``), then score the best checkpoint and write the report."""
    from ._progress import ProgressBar
    from ._runlog import RunLog

    recipe = built.recipe
    facts = PhaseFacts(run_dir)
    # RunLog writes nothing until the first step is done: a resume that fails leaves the logs as they were
    trainer.callbacks = [ProgressBar(total_steps=built.total_steps, items_per_step=recipe.training.batch_size),
                         RunLog(run_dir, tensorboard=recipe.training.tensorboard), facts]
    _say(built.parts.table())
    t0 = time.perf_counter()
    try:
        trainer.fit(built.train_loader, built.dev_loader, resume=resume, max_steps=max_steps,
                    max_minutes=recipe.training.max_minutes, allow_plan_change=allow_plan_change,
                    allow_data_change=allow_data_change)
    finally:
        for cb in trainer.callbacks:
            getattr(cb, "close", lambda: None)()  # flush the step rows and TensorBoard, clear the bar
    facts.finish(completed=True)
    _failpoints.reached("fit.done")
    log_line(run_dir, f"training ended at step {trainer.step:,}: {trainer.stop_reason}", echo=False)
    _log_average(run_dir, trainer.averaged)
    return _report(built, run_dir, title, trainer.step, (time.perf_counter() - t0) / 60, trainer.device,
                   facts.summary())


def _log_average(run_dir: Path, averaged: dict[str, Any] | None) -> None:
    """One log line for ``training.average_last``: what was averaged, its dev figures, whether it became best."""
    if averaged is None:
        return
    scores = {k.removeprefix("dev_"): v for k, v in averaged.items() if k.startswith("dev_")}
    verdict = "it is now the best checkpoint" if averaged["chosen"] else "the best epoch stays best"
    line = (f"averaged {len(averaged['from'])} epoch-end checkpoints ({averaged['from'][0]} .. "
            f"{averaged['from'][-1]}): dev {format_metrics(scores)}; {verdict}")
    log_line(run_dir, line)


def _report(built: Built, run_dir: Path, title: str, steps: int, minutes: float, device: torch.device,
            facts: dict[str, Any] | None = None) -> dict[str, Any]:
    """Score the run's best checkpoint (else its latest) on dev, with the recipe's seed, then write
    the plots, report.md and the closing lines of log.txt."""
    recipe = built.recipe
    run = RunFolder(run_dir)
    which = run.best_or_latest()
    ckpt = run.checkpoint(which)
    _checkpoint.load_weights(built.model, built.parts, ckpt)
    meta = read_meta(ckpt)
    ckpt_step = meta.get("step", steps)
    built.model.eval()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else [], device_type="cuda"):
        torch.manual_seed(recipe.seed)  # what evaluation draws is the same on every path to this report
        dev = built.task.evaluate(built.model, _device_batches(built.kind.eval_loader(recipe, built.data.dev), device),
                                  built.data.dev)
    source = f"{which} checkpoint, step {ckpt_step:,} of {steps:,}" if isinstance(ckpt_step, int) else which
    averaged_from = meta.get("averaged_from")
    if isinstance(averaged_from, list):
        source += f", the average of {len(averaged_from)} epoch-end checkpoints"
    if which == "latest" and recipe.training.best_metric:
        source += f" (no epoch improved {recipe.training.best_metric})"
    summary = {"dev figures from": source, "steps trained": steps, "training minutes": round(minutes, 2),
               **{f"dev {k}": v for k, v in dev.items()}, **(facts or {})}
    warning = truncation_warning(dev.get("at_max_len"), len(built.data.dev) if built.data.dev is not None else 0,
                                 built.task, "dev")
    if warning:
        summary["warning"] = warning
        log_line(run_dir, f"warning: {warning}")
    if built.init_log:
        summary["init"] = "; ".join(built.init_log)
    if built.data.extra.get("subset"):
        summary["training data"] = built.data.extra["subset"]
    plots = _plots(run_dir)
    from ._report import write_report

    _failpoints.reached("report.plots")
    report = write_report(run_dir, title, summary, plots)
    _failpoints.reached("report.written")
    log_line(run_dir, f"dev: {format_metrics(dev)}  ({source}, {minutes:.1f} min)")
    _say(f"run directory: {run_dir}  (report: {report}; log: {run.log}; plots: "
         f"{', '.join(p.name for p in plots) or 'none'})")
    return {**summary, "dev": dev}


def truncation_warning(count: Any, total: int, task: Any, split: str) -> str | None:
    """A warning when ``count`` decoded outputs stopped at the length limit (``None`` when none did)."""
    if not isinstance(count, int | float) or count <= 0:
        return None
    limit = getattr(task, "max_len", None) or getattr(task, "max_new_tokens", None)
    what = f"{limit} tokens" if isinstance(limit, int) else "the decoding limit"
    return (f"{int(count):,} of {total:,} {split} outputs stopped at {what}, not at an end token: they may be cut "
            "short; raise eval.max_len (or --max-len)")


def _plots(run_dir: Path) -> list[Path]:
    try:
        from ._plots import make_plots

        return make_plots(run_dir)
    except (ImportError, ValueError) as e:
        _say(f"(plots skipped: {e})")
        return []


def _start_run(built: Built, run_dir: Path, prior: Prior, source: str, title: str) -> None:
    run = RunFolder(run_dir)
    run.create(prior, source, title)
    run.write_config(dump(built.recipe))
    run.write_artifacts(built.kind.artifacts(built.data))
    for line in built.init_log:
        log_line(run_dir, line, echo=False)
    if built.data.extra.get("subset"):
        log_line(run_dir, f"training data: {built.data.extra['subset']}")


def run_recipe(recipe: Recipe, run_dir: Path, *, max_steps: int | None = None, title: str = "partwise run",
               prior: Prior = Prior.EMPTY, source: str = "") -> dict[str, Any]:
    """Check a validated recipe, build everything, create the run in ``run_dir`` and train it.

    Nothing is written before every check has passed; a run that fails before its first checkpoint
    is removed again (see :mod:`partwise._run._runfolder`)."""
    check_recipe(recipe)
    return _train_new(recipe, run_dir, max_steps=max_steps, title=title, prior=prior, source=source or title)


def _train_new(recipe: Recipe, run_dir: Path, *, max_steps: int | None, title: str, prior: Prior,
               source: str) -> dict[str, Any]:
    built = build_run(recipe)
    if built.kind.checks_need_data(recipe):  # a custom factory: parts and plan now
        check_recipe(recipe, source, model=built.model)
    for line in built.init_log:
        _say(line)
    trainer = make_trainer(built, run_dir)
    _start_run(built, run_dir, prior, source, title)
    try:
        return _fit_and_report(built, trainer, run_dir, resume=None, max_steps=max_steps, title=title)
    except BaseException:
        if RunFolder(run_dir).discard_attempt(prior):
            _say(f"({run_dir} removed: the run stopped before its first checkpoint, so there is nothing to resume)")
        raise


def train(recipe_path: str, overrides: list[str], overwrite: bool, max_steps: int | None) -> int:
    recipe, _ = load_recipe(recipe_path, overrides)
    check_recipe(recipe, recipe_path)
    run_dir = Path(recipe.run_dir)
    prior = RunFolder(run_dir).plan(overwrite)  # read-only: refuses before the data is even read
    return _until_interrupted(run_dir, lambda: _train_new(
        recipe, run_dir, max_steps=max_steps, title=f"partwise train {recipe_path}", prior=prior, source=recipe_path))


def _until_interrupted(run_dir: Path, work: Callable[[], Any]) -> int:
    """Run ``work``: 0 when it ends, 130 on Ctrl-C (after saying how to resume the run)."""
    try:
        work()
    except KeyboardInterrupt:
        _interrupted(run_dir)
        return 130
    return 0


def _interrupted(run_dir: Path) -> None:
    if run_dir.is_dir() and RunFolder(run_dir).has_checkpoint():
        print(f"partwise: interrupted; the last complete checkpoint is intact: `partwise resume {run_dir}`",
              file=sys.stderr)
    else:
        print("partwise: interrupted before the first checkpoint; nothing to resume", file=sys.stderr)


# -- reading a run ----------------------------------------------------------------------------
def read_run_config(run_dir: Path) -> Recipe:
    path = RunFolder(run_dir).config
    raw = read_yaml(path, "restore the run's config.yaml (the resolved recipe it was trained with) or train again")
    return validate(raw, str(path))


def _load_weights(model: Any, parts: Any, ckpt: Path, run_dir: Path) -> None:
    try:
        _checkpoint.load_weights(model, parts, ckpt)
    except (PartError, _errors.CheckpointError) as e:
        raise BadFileError(f"{_one_line(e)}; {RunFolder(run_dir).config} does not describe the model this checkpoint "
                           "was trained with: restore the run's own config.yaml") from None


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


def _finished(built: Built, state: dict[str, Any]) -> str | None:
    """Why a run needs no more training (``None`` if it does)."""
    step, total = state["step"], built.total_steps
    if step >= total:
        return f"finished: step {step} of {total}"
    stop = built.recipe.training.early_stopping
    if stop is not None and isinstance(state["stale_evals"], int) and state["stale_evals"] >= stop.patience:
        return f"stopped early at step {step} of {total} ({stop.metric} did not improve in {stop.patience} evaluations)"
    return None


def resume(run_dir: str, max_steps: int | None, allow_plan_change: bool = False,
           allow_data_change: bool = False) -> int:
    run = RunFolder.existing(run_dir, "resume")
    path = run.path
    recipe = read_run_config(path)
    ckpt = run.checkpoint("latest")
    check_weight_files(ckpt, read_meta(ckpt))
    state = read_state(ckpt)
    built = build_run(recipe, run.read_artifacts(), run.artifacts)
    check_recipe(recipe, str(run.config), model=built.model)
    _load_weights(built.model, built.parts, ckpt, path)  # does the checkpoint fit this model?
    done = _finished(built, state)
    if done is not None and not _report_current(path, ckpt):
        return _finish_report(built, path, state, done)
    if done is not None:
        _say(f"{run_dir}: the run is {done}; nothing to resume, nothing changed "
             f"(`partwise eval {run_dir}` scores it; train a new run to train longer)")
        return 0
    if max_steps is not None and max_steps <= state["step"]:
        _say(f"{run_dir}: the latest checkpoint is at step {state['step']}, already >= --max-steps {max_steps}; "
             "nothing to do, nothing changed")
        return 0
    trainer = make_trainer(built, path)
    run.remove_debris()  # half-written logs, reports or checkpoints of a killed process
    return _until_interrupted(path, lambda: _fit_and_report(
        built, trainer, path, resume=ckpt, max_steps=max_steps, title=_title(path),
        allow_plan_change=allow_plan_change, allow_data_change=allow_data_change))


def _title(run_dir: Path) -> str:
    """The report title of the run: the one of the command that started it (kept in its marker)."""
    return RunFolder(run_dir).title() or f"partwise resume {run_dir}"


def _report_current(run_dir: Path, ckpt: Path) -> bool:
    """Whether ``report.md`` was written after the latest checkpoint (a kill can come in between)."""
    report = RunFolder(run_dir).report
    return report.is_file() and report.stat().st_mtime_ns >= (ckpt / META).stat().st_mtime_ns


def _finish_report(built: Built, run_dir: Path, state: dict[str, Any], done: str) -> int:
    """A finished run whose report was not written (the process was killed after its last
    checkpoint): bring its logs and checkpoints to what the checkpoint holds, then write the report;
    nothing is trained."""
    from ._runlog import RunLog

    _say(f"{run_dir}: the run is {done}, but its report was not written; writing it (nothing is trained)")
    run = RunFolder(run_dir)
    run.remove_debris()
    # the epoch-end checkpoints training.average_last averages are kept, as training keeps them
    _checkpoint.tidy(run.checkpoints, keep=1, keep_epoch_ends=built.recipe.training.average_last or 0)
    log = RunLog(run_dir)
    history = state["history"]
    log.truncate_after(state["step"], history if isinstance(history, list) and all(
        isinstance(row, dict) for row in history) else None)
    log.close()
    facts = PhaseFacts(None)  # the phases' facts as the checkpoint recorded them; log.txt has them already
    facts.load_state_dict(state.get("callbacks", {}).get(type(facts).__name__, {}))
    facts.finish(completed=True)
    trainer = make_trainer(built, run_dir)
    if trainer.average_last:  # killed before the average was made, or before it was decided on: decide again
        trainer.best = state.get("best")
        trainer.consider_average(built.dev_loader)
        _log_average(run_dir, trainer.averaged)
    _report(built, run_dir, _title(run_dir), state["step"], 0.0, trainer.device, facts.summary())
    return 0


def load_run(run_dir: Path, which: str = "best", command: str = "eval") -> tuple[Recipe, Any, Any, KindData, Any]:
    """A trained run's recipe, kind, model (weights of its best or latest checkpoint, eval mode), data
    and parts; every file checked, nothing written."""
    run = RunFolder.existing(run_dir, command)
    path = run.path
    recipe = read_run_config(path)
    if recipe.training.threads:
        torch.set_num_threads(recipe.training.threads)  # as in training: small models decode fastest on few threads
    kind = get_kind(recipe.task.name, recipe.task.path)
    ckpt = run.checkpoint(which)
    check_weight_files(ckpt, read_meta(ckpt))
    data = _load_data(kind, recipe, run.read_artifacts(), run.artifacts)
    model, parts = _model_and_parts(recipe, kind, data, new_run=False)
    _load_weights(model, parts, ckpt, path)
    return recipe, kind, model.eval(), data, parts


def _checkpoint_label(run_dir: Path, which: str) -> str:
    try:
        step = read_meta(RunFolder(run_dir).checkpoint(which)).get("step")
    except (OSError, ValueError, _errors.PartwiseError):
        step = None
    return f"{which} checkpoint" + (f", step {step:,}" if isinstance(step, int) else "")


def load_runs(run_dirs: Sequence[str], command: str) -> tuple[Recipe, Any, Any, KindData, str]:
    """One run's recipe, kind, model and data (see :func:`load_run`), or several runs' models as one
    :class:`~partwise.seq2seq.Ensemble` (runs of the same seq2seq task with the same vocabularies;
    refused, naming the difference, otherwise), with the label of the checkpoints used."""
    paths = [Path(r) for r in run_dirs]
    loaded = []
    for path in paths:
        which = RunFolder(path).best_or_latest()
        recipe, kind, model, data, _ = load_run(path, which, command=command)
        loaded.append((recipe, kind, model, data, _checkpoint_label(path, which)))
    if len(loaded) == 1:
        return loaded[0]
    from ..seq2seq import Ensemble

    first, vocab = loaded[0], RunFolder(paths[0]).read_artifacts()
    errors = []
    for path, (recipe, kind, model, _, _) in zip(paths, loaded, strict=True):
        if not kind.decodes or not callable(getattr(model, "encode", None)) or not hasattr(model, "decoder"):
            errors.append(f"{path}: its model ({recipe.model.name!r}, task {recipe.task.name!r}) is not a partwise "
                          "seq2seq model; an ensemble needs runs of task seq2seq with gru, transformer or protocol "
                          "models")
        elif recipe.task.name != first[0].task.name:
            errors.append(f"{path}: task {recipe.task.name!r}, not {first[0].task.name!r} as {paths[0]}")
        else:
            mine = RunFolder(path).read_artifacts()
            for key in sorted(set(vocab) | set(mine)):
                if vocab.get(key) != mine.get(key):
                    ours, theirs = (len((a.get(key) or {}).get("tokens", [])) for a in (mine, vocab))
                    errors.append(f"{path}: its {key!r} vocabulary differs from {paths[0]}'s ({ours} tokens vs "
                                  f"{theirs}); an ensemble needs runs trained on the same vocabularies")
    if errors:
        raise ConfigError(errors)
    recipe, kind, _, data, _ = first
    ensemble = Ensemble([m for _, _, m, _, _ in loaded]).eval()
    return recipe, kind, ensemble, data, f"ensemble of {len(loaded)} runs: " + ", ".join(
        f"{p} ({label})" for p, (_, _, _, _, label) in zip(paths, loaded, strict=True))


def evaluate(run_dir: str | Sequence[str], split: str, beam_size: int | None, max_len: int | None = None) -> int:
    runs = [run_dir] if isinstance(run_dir, str) else list(run_dir)
    recipe, kind, model, data, label = load_runs(runs, "eval")
    dataset = getattr(data, split)
    if dataset is None:
        raise ConfigError([f"--split {split}: this run's data has no {split} split"])
    if max_len is not None and not kind.decodes:
        raise ConfigError([f"--max-len: runs of task {recipe.task.name!r} do not decode sequences; leave it out"])
    task = kind.build_task(recipe, data, max_len)
    if beam_size:
        task.beam_size = beam_size
    t0 = time.perf_counter()
    scores = task.evaluate(model, kind.eval_loader(recipe, dataset), dataset)
    _say(f"{split}: {format_metrics(scores)}  ({len(dataset):,} inputs, {label}, {time.perf_counter() - t0:.1f} s)")
    warning = truncation_warning(scores.get("at_max_len"), len(dataset), task, split)
    if warning:
        print(f"partwise: warning: {warning}", file=sys.stderr)
    return 0


def _inputs_from(inputs: list[str], file: str | None) -> list[str]:
    """The inputs to predict: arguments, then a file's lines or stdin's ('-'); blank lines skipped."""
    for i, text in enumerate(inputs, start=1):
        if not text.strip():
            raise ConfigError([f"input {i} is empty; give inputs such as `partwise predict RUN hello world`"])
    if file == "-" or (not inputs and file is None and not sys.stdin.isatty()):
        return inputs + [w.strip() for w in sys.stdin if w.strip()]
    if file is not None:
        source = Path(file)
        if not source.is_file():
            raise ConfigError([f"--file: {file!r} {'is not a file' if source.exists() else 'not found'}; "
                               "give a text file with one input per line"])
        try:
            lines = source.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as e:
            raise ConfigError([f"--file: {file!r} is not UTF-8 text (byte {e.start}); give a text file "
                               "with one input per line"]) from None
        return inputs + [w.strip() for w in lines if w.strip()]
    return inputs


EMPTY = "<empty>"  # how an empty output is printed


def predict(run_dir: str | Sequence[str], inputs: list[str], file: str | None, beam_size: int | None,
            max_len: int | None = None, join: str | None = None) -> int:
    """Print ``input<TAB>output`` per input; warnings (unknown source tokens, outputs at the length
    limit) go to stderr, one per input."""
    inputs = _inputs_from(inputs, file)
    if not inputs:
        raise ConfigError(["no inputs given: pass them as arguments, --file FILE, or pipe them on stdin ('-')"])
    recipe, kind, model, data, _ = load_runs([run_dir] if isinstance(run_dir, str) else list(run_dir), "predict")
    if not kind.decodes:
        if max_len is not None or join is not None:
            raise ConfigError([f"--max-len/--join: runs of task {recipe.task.name!r} do not decode sequences"])
        for text, out in zip(inputs, kind.predict(recipe, model, data, inputs, beam_size), strict=True):
            _say(f"{text}\t{out}")
        return 0
    predictions = kind.predict_details(recipe, model, data, inputs, beam_size, max_len)
    for text, p in zip(inputs, predictions, strict=True):
        if p.unknown:
            shown = ", ".join(repr(t) for t in p.unknown[:8])
            print(f"partwise: warning: input {text!r}: {shown} not in the source vocabulary (read as <unk>); "
                  "the output is a guess", file=sys.stderr)
        if p.at_max_len:
            print(f"partwise: warning: input {text!r}: the output stopped at the length limit ({len(p.tokens)} "
                  "tokens) and may be cut short; raise --max-len", file=sys.stderr)
        out = kind.join(recipe, p.tokens, join)
        _say(f"{text}\t{out if out else EMPTY}")
    return 0


def inspect(recipe_path: str, overrides: list[str]) -> int:
    recipe, _ = load_recipe(recipe_path, overrides)
    check_recipe(recipe, recipe_path)
    built = build_run(recipe)
    if built.kind.checks_need_data(recipe):  # a custom factory: parts and plan now
        check_recipe(recipe, recipe_path, model=built.model)
    model, parts, steps = built.model, built.parts, built.steps_per_epoch
    _say(f"task: {recipe.task.name}; model: {recipe.model.name} ({sum(p.numel() for p in model.parameters()):,} "
         f"parameters); data: {recipe.data.name}, {len(built.data.train):,} training rows, {steps:,} steps per epoch")
    _say(parts.table())
    _say(built.plan.describe(parts, steps_per_epoch=steps))
    return 0
