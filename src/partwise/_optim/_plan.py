"""Staged plans: what trains when, at which learning rate."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._errors import ConfigError, PartError
from .._model._freezing import Mode
from .._model._parts import Parts
from ._optimizers import DEFAULT_OPTIONS, PartConfig, is_no_decay
from ._schedule import LRSchedule

__all__ = ["Phase", "Plan", "PhaseSpan", "length_problem", "lr_problem"]


def _once(message: str) -> str:
    """``part 'a': X | part 'b': X`` -> ``X``: the same problem for every part is said once."""
    bodies = {re.sub(r"^part '[^']*': ", "", piece) for piece in message.split(" | ")}
    return bodies.pop() if len(bodies) == 1 else message


def length_problem(epochs: Any, steps: Any) -> str | None:
    """The one rule for a phase's length: exactly one of ``epochs`` and ``steps`` (the plan and the
    recipe schema both use it)."""
    if (epochs is None) == (steps is None):
        return f"give exactly one of epochs= or steps= (got epochs={epochs}, steps={steps})"
    return None


def lr_problem(part: str, lr: Any) -> str | None:
    """The one rule for a learning rate: a finite number >= 0 (``None``: the optimizer's default)."""
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, int | float) or not math.isfinite(lr)
                           or lr < 0):
        return f"learning rate {lr!r} must be a finite number >= 0, e.g. {{{part!r}: 1e-3}}"
    return None


@dataclass(frozen=True)
class Phase:
    """One stage of training.

    Args:
        name: shown in logs, plots and ``describe``.
        epochs / steps: the phase's length; give exactly one (steps are optimizer steps).
        train: part -> learning rate, or part -> options (``{"lr": 1e-3, "weight_decay": 0.0}``).
            Parts not listed are frozen for the phase.
        optimizer: options shared by every trained part (``name``, ``weight_decay``, betas ...).
        schedule: learning-rate schedule; groups that join at this phase warm up from their own start.
        task_options: options for the task during this phase, passed to its ``loss`` unread as
            ``ctx.task_options`` (e.g. ``{"teacher_forcing": TeacherForcing(...)}`` for the seq2seq
            tasks, see :mod:`partwise.seq2seq`; empty: the task's own settings).
        norm / dropout: how parts frozen in this phase keep their norm and dropout layers.
        separate: one optimizer per part (:class:`~partwise.OptimizerSet`) instead of groups.

    Examples:
        >>> Phase("head", epochs=1, train={"decoder": 1e-3}).train_options()["decoder"]["lr"]
        0.001
    """

    name: str
    epochs: int | None = None
    steps: int | None = None
    train: Mapping[str, float | Mapping[str, Any]] = field(default_factory=dict)
    optimizer: Mapping[str, Any] = field(default_factory=dict)
    schedule: LRSchedule = field(default_factory=LRSchedule)
    task_options: Mapping[str, Any] = field(default_factory=dict)
    norm: Mode = "eval"
    dropout: Mode = "eval"
    separate: bool = False

    def problems(self, where: str) -> list[str]:
        out = []
        length = length_problem(self.epochs, self.steps)
        if length:
            out.append(f"{where}: {length}")
        for key in ("epochs", "steps"):
            v = getattr(self, key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
                out.append(f"{where}.{key}: {v!r} must be a whole number > 0")
        if not isinstance(self.task_options, Mapping) or not all(isinstance(k, str) for k in self.task_options):
            out.append(f"{where}.task_options: {self.task_options!r} must be a mapping of option names to "
                       "values, e.g. {'teacher_forcing': TeacherForcing(0.5)}")
        if not self.train:
            out.append(f"{where}.train: empty; name at least one part to train, e.g. {{'decoder': 1e-3}}")
        for part, opts in self.train.items():
            lr = opts if not isinstance(opts, Mapping) else opts.get("lr", self.optimizer.get("lr"))
            problem = lr_problem(part, lr)
            if problem:
                out.append(f"{where}.train.{part}: {problem}")
        return out

    def default_options(self) -> dict[str, Any]:
        """Optimizer options for parts the phase does not list (AdamW unless ``optimizer`` names one)."""
        return {"name": DEFAULT_OPTIONS["name"], **self.optimizer}

    def train_options(self) -> dict[str, dict[str, Any]]:
        """Per trained part: the optimizer options (shared options under the part's own)."""
        return {
            p: {**self.optimizer, **(dict(o) if isinstance(o, Mapping) else {"lr": float(o)})}
            for p, o in self.train.items()
        }


def held_elsewhere_problems(parts: Parts, part: str, where: str) -> list[str]:
    """A part to train whose parameters another freeze holds (they would silently stay frozen)."""
    held = parts.held_elsewhere(part)
    if not held:
        return []
    return [f"{where}: part {part!r} is to train, but {len(held)} of its parameter(s) ({', '.join(held[:3])}"
            f"{' ...' if len(held) > 3 else ''}) are held frozen by another Parts registry or pw.freeze over "
            "the same model; unfreeze them there (or drop that registry) first"]


@dataclass(frozen=True)
class PhaseSpan:
    """Where a phase sits on the step axis: optimizer steps ``start`` (inclusive) to ``end``
    (exclusive); ``index`` is its position in the plan. :meth:`Plan.spans` returns them."""

    index: int
    phase: Phase
    start: int
    end: int


class Plan:
    """An ordered list of phases; parts not listed in a phase are frozen during it.

    Examples:
        >>> plan = Plan([Phase("decoder only", epochs=2, train={"decoder": 1e-3}),
        ...              Phase("all", epochs=3, train={"decoder": 1e-3, "encoder": 1e-5})])
        >>> [(s.phase.name, s.start, s.end) for s in plan.spans(steps_per_epoch=10)]
        [('decoder only', 0, 20), ('all', 20, 50)]
    """

    def __init__(self, phases: Sequence[Phase]):
        self.phases = list(phases)
        errors = [] if self.phases else ["plan: no phases; give at least one Phase"]
        for i, ph in enumerate(self.phases):
            if not isinstance(ph, Phase):
                errors.append(f"plan.phases[{i}]: expected a Phase, got {type(ph).__name__}")
            else:
                errors += ph.problems(f"plan.phases[{i}] ({ph.name!r})")
        if errors:
            raise ConfigError(errors)

    # -- helpers for common plans ---------------------------------------------------------------
    @classmethod
    def fine_tune(
        cls,
        head: str | Sequence[str],
        body: str | Sequence[str],
        lr: float,
        epochs: int,
        freeze_epochs: int = 1,
        body_lr_ratio: float = 0.01,
        warmup: int = 0,
        optimizer: Mapping[str, Any] | None = None,
    ) -> Plan:
        """fastai-style ``fine_tune``: train ``head`` with ``body`` frozen, then both, the body at
        ``lr * body_lr_ratio`` (its own warmup)."""
        heads = [head] if isinstance(head, str) else list(head)
        bodies = [body] if isinstance(body, str) else list(body)
        opt = dict(optimizer or {})
        sched = LRSchedule(warmup=warmup, decay="cosine")
        return cls([
            Phase("frozen body", epochs=freeze_epochs, train=dict.fromkeys(heads, lr), optimizer=opt, schedule=sched),
            Phase("all", epochs=epochs, optimizer=opt, schedule=sched,
                  train={**dict.fromkeys(heads, lr), **dict.fromkeys(bodies, lr * body_lr_ratio)}),
        ])

    @classmethod
    def gradual(
        cls,
        parts_from_top: Sequence[str],
        epochs_each: int,
        lr: float = 1e-3,
        lr_decay: float = 2.6,
        optimizer: Mapping[str, Any] | None = None,
    ) -> Plan:
        """ULMFiT gradual unfreezing (Howard & Ruder 2018): phase k trains the top k+1 parts, the part
        at depth d below the top at ``lr / lr_decay**d`` (discriminative learning rates; 2.6 is the
        paper's factor)."""
        if lr_decay <= 0:
            raise ConfigError([f"lr_decay: {lr_decay!r} must be > 0 (ULMFiT uses 2.6)"])
        top = list(parts_from_top)
        return cls([
            Phase(f"top {k + 1}", epochs=epochs_each, optimizer=dict(optimizer or {}),
                  train={p: lr / lr_decay**d for d, p in enumerate(top[: k + 1])})
            for k in range(len(top))
        ])

    # -- positions ------------------------------------------------------------------------------
    def spans(self, steps_per_epoch: int) -> list[PhaseSpan]:
        if steps_per_epoch <= 0:
            raise ValueError(f"steps_per_epoch={steps_per_epoch} must be > 0: is the training data empty?")
        out, start = [], 0
        for i, ph in enumerate(self.phases):
            n = ph.steps if ph.steps is not None else ph.epochs * steps_per_epoch  # type: ignore[operator]
            out.append(PhaseSpan(i, ph, start, start + n))
            start += n
        return out

    def total_steps(self, steps_per_epoch: int) -> int:
        return self.spans(steps_per_epoch)[-1].end

    def span_at(self, step: int, steps_per_epoch: int) -> PhaseSpan:
        """The phase that runs optimizer step ``step`` (the last one past the end)."""
        spans = self.spans(steps_per_epoch)
        return next((s for s in spans if step < s.end), spans[-1])

    def check(self, parts: Parts) -> None:
        """Check the whole plan against ``parts`` before any training, every problem at once: parts
        that do not exist or are made only of fixed parameters, phases whose freeze set would half
        freeze a shared tensor, and each phase's optimizer name and options (a dry run of its
        optimizer configuration)."""
        errors = []
        for i, ph in enumerate(self.phases):
            where = f"plan.phases[{i}] ({ph.name!r})"
            unknown = [p for p in ph.train if p not in parts]
            for p in unknown:
                errors.append(f"{where}.train.{p}: unknown part {p!r}; parts are {parts.names}")
            if unknown:
                continue
            for p in ph.train:
                fixed = parts[p].fixed
                if fixed and len(fixed) == parts[p].num_parameters:
                    errors.append(f"{where}.train: part {p!r} holds only fixed parameters (created with "
                                  "requires_grad=False), which never train; remove it from the phase")
                errors += held_elsewhere_problems(parts, p, f"{where}.train")
            frozen = [p for p in parts.names if p not in ph.train]
            errors += [f"{where} freezes {', '.join(map(repr, frozen))}: {c}" for c in parts.conflicts(frozen)]
            try:
                PartConfig(parts, ph.train_options(), ph.default_options())
            except PartError as e:
                errors.append(f"{where}.optimizer: {_once(str(e))}")
        if errors:
            raise ConfigError(errors)

    def describe(self, parts: Parts, steps_per_epoch: int | None = None) -> str:
        """Per phase, without training: trainable parameters, and LR and weight decay per group."""
        self.check(parts)
        lines = []
        for i, ph in enumerate(self.phases):
            length = f"{ph.epochs} epoch(s)" if ph.epochs is not None else f"{ph.steps} step(s)"
            if steps_per_epoch:
                s = self.spans(steps_per_epoch)[i]
                length += f", steps {s.start}-{s.end}"
            opts = ph.train_options()
            config = PartConfig(parts, opts, ph.default_options(), "auto")
            n_train = sum(v.numel() for p in opts for n, v in parts[p].named_parameters() if n not in parts[p].fixed)
            frozen = [p for p in parts.names if p not in opts]
            lines.append(f"phase {i} {ph.name!r}: {length}; trainable {n_train:,} params; "
                         f"frozen: {', '.join(frozen) or '-'}")
            for p in opts:
                o = config.options[p]
                wd = float(o.get("weight_decay", 0.0) or 0.0)
                named = dict(parts[p].named_parameters())
                nd = sum(v.numel() for n, v in named.items() if wd and is_no_decay(n, v, "auto"))
                lines.append(
                    f"  {p:<14} {config.classes[p].__name__:<8} lr {o.get('lr', 0):<10.3g} wd {wd:<8.3g}"
                    f" params {parts[p].numel - nd:,}" + (f" (+{nd:,} without decay)" if nd else "")
                )
            if ph.schedule.warmup or ph.schedule.decay != "constant":
                lines.append(f"  schedule: warmup {ph.schedule.warmup}, then {ph.schedule.decay}")
            for key, value in sorted(ph.task_options.items()):
                lines.append(f"  {key.replace('_', ' ')}: {value!r}")
        return "\n".join(lines)
