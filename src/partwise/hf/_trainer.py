"""A partwise plan inside the Hugging Face ``Trainer`` / ``Seq2SeqTrainer``.

What the HF Trainer does when (transformers 5.x, read in ``Trainer._inner_training_loop``): the train
dataloader -> ``set_initial_training_values`` (optimizer steps per epoch) -> (resume: the trainer state
and callback states) -> ``create_optimizer`` -> ``accelerator.prepare(model, optimizer)`` ->
``create_scheduler`` -> (resume: ``_load_optimizer_and_scheduler``) -> per optimizer step: for each
micro-batch ``training_step`` (``model.train()``, ``compute_loss``, backward), then clipping,
``optimizer.step()``, ``lr_scheduler.step()``. So the plan's steps per epoch are taken from
``set_initial_training_values``, the optimizer is the plan driver's (a group per part from step 0),
the scheduler changes no learning rate (the driver sets them), the phase of a step is entered in its
first micro-batch's ``training_step``, and on resume the plan's state (freeze set) is restored just
before the optimizer's state is loaded, so that state lands in the groups it was saved from.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import LRScheduler
from transformers import Seq2SeqTrainer, Trainer, TrainingArguments

from .._errors import ConfigError
from .._model._parts import Parts
from .._optim._optimizers import OptimizerSet
from .._optim._plan import Plan
from .._train._cache import PhaseCache
from .._train._driver import STATE_FILE, PlanDriver
from ._parts import parts as hf_parts
from ._task import Seq2SeqLMTask
from ._teacher_forcing import IGNORE

__all__ = ["PartwiseSeq2SeqTrainer", "PartwiseTrainer", "PlanLR", "PLAN_STATE_NAME"]

#: the file a checkpoint folder holds the plan's state in (phase, freeze state, plan fingerprint)
PLAN_STATE_NAME = STATE_FILE


class PlanLR(LRScheduler):
    """The scheduler the HF Trainer steps when a plan runs: it changes no learning rate, since the
    plan sets every part's (:class:`~partwise.PlanDriver`); it reports them (``get_last_lr``) for
    logging and keeps HF's checkpoints' ``scheduler.pt`` meaningful."""

    def get_lr(self) -> list[float]:  # type: ignore[override]
        return [float(g["lr"]) for g in self.optimizer.param_groups]


def _without_row_ids(inputs: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in inputs.items() if k != "index"}


class _PlanMixin:
    """What ``PartwiseTrainer`` and ``PartwiseSeq2SeqTrainer`` add to HF's trainers (see their docs)."""

    # attributes of HF's Trainer this mixin reads (set by its __init__)
    args: Any
    state: Any
    model: Any
    optimizer: Any
    lr_scheduler: Any
    accelerator: Any
    model_accepts_loss_kwargs: bool
    _signature_columns: Any

    def _setup_plan(self, model: nn.Module, args: Any, parts: Parts | None, plan: Plan, task: Any, guard: bool,
                    cache: str, allow_plan_change: bool, kwargs: dict[str, Any]) -> dict[str, Any]:
        errors = []
        if not isinstance(plan, Plan):
            errors.append(f"plan: expected a partwise Plan, got {type(plan).__name__}")
        if any(o is not None for o in kwargs.get("optimizers", (None, None)) or ()):
            errors.append("optimizers: the plan builds the optimizer (a group per part) and sets every learning "
                          "rate; give per-part options and schedules in the plan's phases instead")
        if kwargs.get("optimizer_cls_and_kwargs") is not None:
            errors.append("optimizer_cls_and_kwargs: give the optimizer class and options per part in the plan's "
                          "phases (Phase(train={'decoder': {'name': 'adamw', 'lr': 1e-4}}))")
        if kwargs.get("compute_loss_func") is not None:
            errors.append("compute_loss_func: the task computes the training loss (pass task=..., e.g. a "
                          "Seq2SeqLMTask with label_smoothing); a loss function given here would be ignored")
        if kwargs.get("model_init") is not None:
            errors.append("model_init: not supported with a plan (the plan's parts belong to one model object)")
        if args is not None and getattr(args, "world_size", 1) > 1:
            errors.append(f"world_size: {args.world_size} processes; PartwiseSeq2SeqTrainer runs in one process "
                          "for now: under torchrun/accelerate launch use partwise.Trainer or a hand-written "
                          "accelerate loop with partwise.hf.AcceleratePlan")
        if errors:
            raise ConfigError(errors)
        self.parts = parts if parts is not None else hf_parts(model)
        self.task = task if task is not None else Seq2SeqLMTask(
            label_smoothing=float(getattr(args, "label_smoothing_factor", 0.0) or 0.0))
        self.plan_driver = PlanDriver(self.parts, plan, task=self.task, guard=guard)
        if any(ph.separate for ph in plan.phases):
            raise ConfigError(["plan: separate=True (one optimizer per part) cannot run in the HF Trainer, which "
                               "steps one optimizer; give the parts groups of one optimizer (separate=False)"])
        self.plan_driver.prepare()  # phase 0's freeze state, before HF counts or wraps anything
        self.allow_plan_change = allow_plan_change
        self._cache_mode = cache
        self._entered_at: int | None = None  # the optimizer step whose phase was entered last
        self._phase_cache: PhaseCache | None = None
        self._train_loader: Any = None
        self._finished = False
        return kwargs

    def _check_args(self) -> None:
        ignored = []
        defaults = TrainingArguments.__dataclass_fields__
        for key in ("learning_rate", "weight_decay", "optim", "adam_beta1", "adam_beta2", "adam_epsilon",
                    "warmup_steps", "warmup_ratio", "lr_scheduler_type"):
            default = getattr(defaults[key], "default", None) if key in defaults else None
            default = getattr(default, "value", default)
            value = getattr(self.args, key, default)
            value = getattr(value, "value", value)  # SchedulerType is an enum of strings
            if value not in (default, None):
                ignored.append(f"{key}={value!r}")
        if ignored:
            warnings.warn(f"TrainingArguments {', '.join(ignored)}: not used, the plan gives every part its optimizer, "
                          "options and learning rate (per phase: Phase(train=..., optimizer=...), warmup and decay as "
                          "Phase(schedule=pw.LRSchedule(...)))", RuntimeWarning, stacklevel=3)
        self._phase_cache = PhaseCache(self.task, self.parts, self._cache_mode, device=self.args.device)

    # -- the optimizer, the scheduler, the plan's length ---------------------------------------
    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """The plan driver's optimizer: one group per part (frozen parts' groups empty for now)."""
        if self.optimizer is None:
            optimizer = self.plan_driver.build_optimizer()
            if isinstance(optimizer, OptimizerSet):  # refused in __init__; kept for the type checker
                raise ConfigError(["plan: separate optimizers cannot run in the HF Trainer"])
            self.optimizer = optimizer
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer: Any = None) -> LRScheduler:
        """A :class:`PlanLR` (the plan sets the learning rates)."""
        if self.lr_scheduler is None:
            opt = optimizer if optimizer is not None else self.optimizer
            self.lr_scheduler = PlanLR(getattr(opt, "optimizer", opt))
        return self.lr_scheduler

    def set_initial_training_values(self, args: Any, dataloader: Any) -> Any:
        values = super().set_initial_training_values(args, dataloader)  # type: ignore[misc]
        steps_per_epoch, max_steps = values[1], values[-1]
        self.plan_driver.set_steps_per_epoch(int(steps_per_epoch))
        planned = self.plan_driver.total_steps()
        if int(max_steps) != planned:
            last = self.plan_driver.span_at(max(int(max_steps) - 1, 0)).phase.name
            how = f"it stops in phase {last!r}" if max_steps < planned else \
                f"its last phase {self.plan_driver.plan.phases[-1].name!r} goes on past its end"
            warnings.warn(f"the HF Trainer will run {int(max_steps)} optimizer steps, the plan {planned}: {how} "
                          "(set num_train_epochs or max_steps to the plan's length)", RuntimeWarning, stacklevel=2)
        return values

    def get_train_dataloader(self) -> Any:
        self._train_loader = super().get_train_dataloader()  # type: ignore[misc]
        return self._train_loader

    def _set_signature_columns_if_needed(self) -> None:
        """Keep the row id (``index``) HF would drop as "not a forward argument": the frozen-encoder
        cache keys on it (it never reaches the model)."""
        super()._set_signature_columns_if_needed()  # type: ignore[misc]
        if self._signature_columns is not None and "index" not in self._signature_columns:
            self._signature_columns.append("index")

    # -- steps ---------------------------------------------------------------------------------
    def training_step(self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Tensor:
        step = int(self.state.global_step)
        if step != self._entered_at:  # the first micro-batch of an optimizer step
            entered = self.plan_driver.before_step(step)
            if entered or self._entered_at is None:  # a new phase, or this train() call's first step
                self._enter_phase()
            self._entered_at = step
        return super().training_step(model, inputs, num_items_in_batch)  # type: ignore[misc]

    def _enter_phase(self) -> None:
        loader, cache = self._train_loader, self._phase_cache
        if cache is not None:
            cache.enter_phase(getattr(loader, "dataset", None), getattr(loader, "collate_fn", None))

    def compute_loss(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        """In training: the task's loss under the phase's teacher forcing / scheduled sampling, from
        cached encoder outputs where the phase has the cache; normalised as HF normalises the model's
        own loss (by the tokens of the whole accumulated batch). In evaluation: HF's own."""
        if return_outputs or not model.training:
            return super().compute_loss(model, _without_row_ids(inputs), return_outputs,  # type: ignore[misc]
                                        num_items_in_batch)
        ctx = self.plan_driver.context(int(self.state.global_step), int(self.state.epoch or 0))
        hf_model = self.accelerator.unwrap_model(model)
        encoding = self._phase_cache.encoding(inputs) if self._phase_cache is not None else None
        with self.accelerator.autocast():  # the model's forward is autocast by accelerate, its encoder alone not
            loss: Tensor = self.task.loss_from_encoding(hf_model, inputs, encoding, ctx)
        if self.model_accepts_loss_kwargs and num_items_in_batch is not None:
            tokens = (inputs["labels"] != IGNORE).sum() if "labels" in inputs else None
            if tokens is not None:
                loss = loss * tokens.to(loss.dtype) / torch.as_tensor(num_items_in_batch, device=loss.device)
            if self.args.average_tokens_across_devices:
                loss = loss * self.accelerator.num_processes
        return loss

    def prediction_step(self, model: nn.Module, inputs: dict[str, Any], prediction_loss_only: bool,
                        ignore_keys: list[str] | None = None, **gen_kwargs: Any) -> Any:
        return super().prediction_step(model, _without_row_ids(inputs), prediction_loss_only,  # type: ignore[misc]
                                       ignore_keys=ignore_keys, **gen_kwargs)

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        """HF's log, with the learning rate of each part that trains (``learning_rate/<part>``);
        ``learning_rate`` is the first training part's."""
        if "learning_rate" in logs and self.optimizer is not None:
            per_part: dict[str, float] = {}
            for g in self.optimizer.param_groups:
                if g["params"] and "part" in g:
                    per_part.setdefault(g["part"], float(g["lr"]))
            if per_part:
                logs = {**logs, "learning_rate": next(iter(per_part.values())),
                        **{f"learning_rate/{p}": lr for p, lr in per_part.items()}}
        super().log(logs, *args, **kwargs)  # type: ignore[misc]

    # -- checkpoints -----------------------------------------------------------------------------
    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        super()._save_optimizer_and_scheduler(output_dir)  # type: ignore[misc]
        if self.args.should_save:
            self.plan_driver.save_file(output_dir)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        """The plan's state first (the freeze set of the phase in force, the plan checked), then HF's
        optimizer and scheduler states, which then land in the groups they were saved from."""
        if checkpoint is not None:
            self.plan_driver.load_file(checkpoint, self.allow_plan_change, step=int(self.state.global_step),
                                       where="resume_from_checkpoint")
        super()._load_optimizer_and_scheduler(checkpoint)  # type: ignore[misc]

    def _load_best_model(self) -> None:
        self._finish_plan()  # the guard checks the last phase before other weights are loaded
        super()._load_best_model()  # type: ignore[misc]

    def _finish_plan(self) -> None:
        if not self._finished:
            self._finished = True
            self.plan_driver.finish()

    def train(self, *args: Any, **kwargs: Any) -> Any:
        """HF's ``train`` (``resume_from_checkpoint=`` included), then the guard's last check."""
        self._finished, self._entered_at = False, None
        if self._phase_cache is not None:
            self._phase_cache.reset()  # this call's training data may not be the last one's
        out = super().train(*args, **kwargs)  # type: ignore[misc]
        self._finish_plan()
        return out


_DOC = """Follow a :class:`~partwise.Plan` inside the Hugging Face ``{base}``, keeping your own
``{args}``.

The optimizer is the plan's: one group per part from step 0 (frozen parts' groups empty), the same
object for the whole run. Before each optimizer step's first micro-batch the trainer enters the
phase the plan puts that step in (``state.global_step``): exactly the parts the phase does not train
are frozen, with their norm and dropout layers pinned to eval through every ``model.train()``; each
part's optimizer options, learning rate and warmup are the phase's (the ``lr_scheduler_type`` and
``warmup_*`` arguments are not used). The training loss is the task's (:class:`Seq2SeqLMTask` by
default, with the arguments' ``label_smoothing_factor``), so a phase's
``task_options={{"teacher_forcing": ...}}`` gives scheduled sampling; in phases where the encoder is
frozen its outputs are computed once and looked up (``cache="auto"``; ``"on"`` requires it, ``"off"``
never) — it needs a row id per example (``index``: :class:`Seq2SeqLMDataset` gives it; without one,
"auto" warns once and runs the encoder). Evaluation (``predict_with_generate`` included) is HF's own.
Checkpoints hold ``{state}`` beside HF's files; ``train(resume_from_checkpoint=...)`` restores
the phase and freeze state before the optimizer's state is loaded, and refuses another plan unless
``allow_plan_change=True``. One process (``world_size`` 1).

Args:
    model: a Hugging Face encoder–decoder.
    args: your ``{args}``.
    plan: the plan (checked against the parts now, every problem at once).
    parts: the model's registry (default ``partwise.hf.parts(model)``: ``embeddings``, ``encoder``,
        ``decoder``, ``head``).
    task: the training task (default ``Seq2SeqLMTask(label_smoothing=args.label_smoothing_factor)``).
    guard: fingerprint frozen parts at each phase start, check them at its end and when training ends.
    cache: the frozen-encoder cache: ``"auto"``, ``"on"`` or ``"off"``.
    allow_plan_change: resume a checkpoint saved under another plan (warned, and recorded).
    **kwargs: the rest of ``{base}``'s arguments (datasets, collator, callbacks, metrics ...).

Example::

    import partwise as pw, partwise.hf as ph
    plan = pw.Plan([pw.Phase("decoder", epochs=2, train={{"decoder": 1e-3, "head": 1e-3}}),
                    pw.Phase("all", epochs=1, train={{"decoder": 1e-4, "head": 1e-4, "encoder": 1e-5}})])
    trainer = ph.{name}(model, args, plan=plan, train_dataset=ph.Seq2SeqLMDataset(rows),
                        data_collator=ph.Seq2SeqLMCollator(pad_token_id=0))
    trainer.train()
"""


class PartwiseSeq2SeqTrainer(_PlanMixin, Seq2SeqTrainer):
    __doc__ = _DOC.format(base="Seq2SeqTrainer", args="Seq2SeqTrainingArguments", state=PLAN_STATE_NAME,
                          name="PartwiseSeq2SeqTrainer")

    def __init__(self, model: nn.Module, args: Any = None, *, plan: Plan, parts: Parts | None = None,
                 task: Any = None, guard: bool = False, cache: str = "auto", allow_plan_change: bool = False,
                 **kwargs: Any):
        kwargs = self._setup_plan(model, args, parts, plan, task, guard, cache, allow_plan_change, kwargs)
        super().__init__(model=model, args=args, **kwargs)
        self._check_args()


class PartwiseTrainer(_PlanMixin, Trainer):
    __doc__ = _DOC.format(base="Trainer", args="TrainingArguments", state=PLAN_STATE_NAME, name="PartwiseTrainer")

    def __init__(self, model: nn.Module, args: Any = None, *, plan: Plan, parts: Parts | None = None,
                 task: Any = None, guard: bool = False, cache: str = "auto", allow_plan_change: bool = False,
                 **kwargs: Any):
        kwargs = self._setup_plan(model, args, parts, plan, task, guard, cache, allow_plan_change, kwargs)
        super().__init__(model=model, args=args, **kwargs)
        self._check_args()


