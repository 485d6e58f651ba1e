"""The plan driver: the one implementation of a plan's phases, for any training loop.

partwise's :class:`~partwise.Trainer`, the Lightning callback (``partwise.lightning``), the Hugging
Face trainer and a hand-written loop all follow a :class:`~partwise.Plan` through a
:class:`PlanDriver`. The loop says which optimizer step it is about to take; the driver enters the
phase the plan puts that step in and sets every group's learning rate for it.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .._errors import ConfigError
from .._model._guard import FrozenGuard
from .._model._parts import Parts
from .._optim._fingerprint import plan_differences, plan_fingerprint
from .._optim._optimizers import OptimizerSet, PartConfig, build_optimizer, carry_state, optimizers_of, reconfigure
from .._optim._plan import Phase, PhaseSpan, Plan, held_elsewhere_problems
from .._run._atomic import write_text_atomic
from ._task import StepContext, enter_phase

__all__ = ["PlanDriver", "STATE_FILE"]

FORMAT = "partwise.plan-driver/1"
#: the file a loop partwise does not own (the HF Trainer, accelerate) keeps the driver's state in,
#: inside its own checkpoint folder
STATE_FILE = "partwise_plan.json"
Optimizer = torch.optim.Optimizer | OptimizerSet


class PlanDriver:
    """Follows ``plan`` step by step in any training loop: call :meth:`before_step` before each
    optimizer step's first forward.

    At a step that begins a phase the driver enters it, in this order: the guard (``guard=True``)
    checks that the phase that ends left its frozen parts bit-identical; exactly the parts the phase
    does not train are frozen (with its norm/dropout modes) and the others unfrozen, through
    ``Parts`` (so the optimizer's groups follow); each part's optimizer options become the phase's
    (:func:`~partwise.reconfigure`, in place); parts that join get their own warmup; the task and the
    phase's task options are told the phase starts (``enter_phase``). At every step each group's
    learning rate is set from the phase's :class:`~partwise.LRSchedule`. The driver owns the learning
    rates: one changed between steps by anything else (an LR scheduler) is an error, not a silent fight.

    The optimizer is one optimizer with a group per part (or one optimizer per part for ``separate``
    phases), built once by :meth:`build_optimizer` and kept for the whole run, so a loop that holds
    it (Lightning, the HF Trainer) keeps working. A plan whose phases would need another optimizer
    (another class for a part, or a switch between one and several optimizers) is refused up front,
    unless ``rebuild=True`` (partwise's own Trainer): then the driver builds a new one, carrying the
    state where the class stays the same, and :attr:`optimizer` names it.

    :meth:`state_dict` holds the phase in force, the freeze state and the plan's fingerprint;
    :meth:`load_state_dict` refuses another plan (unless ``allow_plan_change``) and restores the
    freeze state at once, so that optimizer state loaded afterwards lands in the groups it was saved
    from; the next :meth:`before_step` then enters the phase of that step.

    Args:
        parts: the model's part registry.
        plan: the plan (checked against ``parts`` now: unknown parts, half-frozen tied tensors,
            optimizer options; every problem at once in a :class:`~partwise.ConfigError`).
        steps_per_epoch: optimizer steps per epoch, which places ``epochs=`` phases on the step axis
            (may be given later with :meth:`set_steps_per_epoch`; phases given in ``steps`` need none).
        task: the task whose ``enter_phase(start)`` is called at each phase start (optional).
        guard: fingerprint frozen tensors at each phase start and check them at its end and at :meth:`finish`.
        rebuild: allow phases that need a new optimizer (see above).

    Examples:
        >>> from torch import nn
        >>> import partwise as pw
        >>> model = nn.Sequential()
        >>> model.add_module("encoder", nn.Linear(4, 4)); model.add_module("decoder", nn.Linear(4, 2))
        >>> plan = pw.Plan([pw.Phase("decoder", steps=2, train={"decoder": 1e-3}),
        ...                 pw.Phase("all", steps=2, train={"decoder": 1e-3, "encoder": 1e-5})])
        >>> driver = pw.PlanDriver(pw.Parts(model), plan)
        >>> optimizer = driver.build_optimizer()
        >>> for step in range(4):
        ...     _ = driver.before_step(step)          # phase, freeze set, per-part learning rates
        ...     loss = model(torch.randn(8, 4)).pow(2).mean()
        ...     loss.backward(); optimizer.step(); optimizer.zero_grad()
        ...     print(step, driver.span.phase.name, model.encoder.weight.requires_grad)
        0 decoder False
        1 decoder False
        2 all True
        3 all True
    """

    def __init__(self, parts: Parts, plan: Plan, *, steps_per_epoch: int | None = None, task: Any = None,
                 guard: bool = False, rebuild: bool = False):
        if not isinstance(plan, Plan):
            raise ConfigError([f"plan: expected a partwise Plan, got {type(plan).__name__}"])
        plan.check(parts)
        self.parts, self.plan, self.task, self.use_guard, self.rebuild = parts, plan, task, guard, rebuild
        if not rebuild:
            layout = self.layout_problems()
            if layout:
                raise ConfigError(layout)
        self.steps_per_epoch: int | None = None
        self.span: PhaseSpan | None = None  # the phase in force (None until a step entered one)
        self.optimizer: Optimizer | None = None
        self.plan_changes: list[str] = []  # accepted with allow_plan_change, oldest first
        self._restored: int | None = None  # phase index a state dict put in force (its freeze state)
        # a restored fingerprint to check once the steps per epoch are known
        self._pending: tuple[Mapping[str, Any], bool, int | None] | None = None
        self._guard: FrozenGuard | None = None
        self._lrs: list[float] | None = None  # the learning rates set last, to notice another writer
        if steps_per_epoch is not None:
            self.set_steps_per_epoch(steps_per_epoch)

    # -- the plan on the step axis --------------------------------------------------------------
    def set_steps_per_epoch(self, steps_per_epoch: int) -> list[str]:
        """Place ``epochs=`` phases on the step axis; checks a restored fingerprint that waited for it.
        Returns the plan changes accepted then (see :meth:`load_state_dict`)."""
        if isinstance(steps_per_epoch, bool) or not isinstance(steps_per_epoch, int) or steps_per_epoch < 1:
            raise ConfigError([f"steps_per_epoch: {steps_per_epoch!r} must be a whole number >= 1 (optimizer steps "
                               "per epoch: batches per epoch / gradient accumulation); is the training data empty?"])
        self.steps_per_epoch = steps_per_epoch
        if self._pending is None:
            return []
        saved, allow, step = self._pending
        self._pending = None
        return self._check_fingerprint(saved, allow, step)

    def _steps(self) -> int:
        if self.steps_per_epoch is not None:
            return self.steps_per_epoch
        if all(ph.steps is not None for ph in self.plan.phases):
            return 1  # every phase counted in steps: epochs play no part
        raise ConfigError(["steps_per_epoch: unknown, and the plan has phases given in epochs; pass "
                           "PlanDriver(..., steps_per_epoch=N) or call set_steps_per_epoch(N) before the first step"])

    def span_at(self, step: int) -> PhaseSpan:
        """The phase the plan puts optimizer step ``step`` in (the last one past the plan's end)."""
        return self.plan.span_at(step, self._steps())

    def total_steps(self) -> int:
        """Optimizer steps the whole plan takes."""
        return self.plan.total_steps(self._steps())

    def fingerprint(self) -> dict[str, Any]:
        """The plan as a checkpoint stores it (plain text; the same in every process)."""
        return plan_fingerprint(self.plan, self.steps_per_epoch or 0)

    def layout_problems(self) -> list[str]:
        """Why one optimizer could not serve every phase: a part trained with another optimizer class
        in one phase than in another, or a switch between one optimizer and one per part (empty: it can)."""
        first = self.plan.phases[0]
        out = [f"plan.phases[{i}] ({ph.name!r}): separate={ph.separate} but phase 0 has separate={first.separate}; "
               "a run keeps one optimizer (or one per part) from start to end in a loop partwise does not own"
               for i, ph in enumerate(self.plan.phases) if ph.separate != first.separate]
        for part in self.parts.names:
            used = {i: self._classes(ph)[part] for i, ph in enumerate(self.plan.phases) if part in ph.train}
            if len(set(used.values())) > 1:
                listing = ", ".join(f"{c} in phase {i}" for i, c in used.items())
                out.append(f"plan: part {part!r} trains with {listing}; give each part one optimizer class for the "
                           "whole plan (its options, learning rate included, may change from phase to phase)")
        return out

    def _classes(self, ph: Phase) -> dict[str, str]:
        config = PartConfig(self.parts, ph.train_options(), ph.default_options())
        return {p: c.__name__ for p, c in config.classes.items()}

    def _options(self, ph: Phase) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
        """The phase's optimizer options per part; a part it freezes keeps the options of the first
        phase that trains it, so its (empty) groups are of the class it will train with."""
        per_part = ph.train_options()
        for later in self.plan.phases:
            for part, opts in later.train_options().items():
                per_part.setdefault(part, opts)
        return per_part, ph.default_options()

    # -- the optimizer ------------------------------------------------------------------------
    def prepare(self) -> None:
        """Freeze what the phase in force (the first, or the one a state dict restored) does not
        train, before anything registers the trainable parameters (a DDP wrapper, an optimizer)."""
        if self.span is None and self._restored is None:
            self._set_frozen(self._phase_in_force())

    def build_optimizer(self) -> Optimizer:
        """The run's optimizer: one group per part (frozen parts' groups empty for now), or one
        optimizer per part for ``separate`` phases, with the options of the phase in force (the
        first, or the one a state dict restored). Built once; later calls return the same object."""
        if self.optimizer is None:
            self.prepare()
            self.optimizer = self._build(self._phase_in_force())
        return self.optimizer

    def _build(self, ph: Phase) -> Optimizer:
        per_part, default = self._options(ph)
        return build_optimizer(self.parts, per_part=per_part, default=default, separate=ph.separate)

    def _phase_in_force(self) -> Phase:
        if self.span is not None:
            return self.span.phase
        index = self._restored if self._restored is not None else 0
        return self.plan.phases[min(index, len(self.plan.phases) - 1)]

    # -- steps --------------------------------------------------------------------------------
    def before_step(self, step: int) -> bool:
        """Make optimizer step ``step`` run as the plan says: enter its phase if another one is in
        force, then set every group's learning rate for it. Returns whether a phase was entered."""
        span = self.span_at(step)
        entered = self.span is None or span.index != self.span.index
        if entered:
            self._enter(span)
        elif self._lrs is not None:
            self._check_lrs(step)
        optimizer = self.optimizer
        if optimizer is None:  # unreachable: _enter built it
            raise RuntimeError("partwise internal error: no optimizer after entering a phase")
        span.phase.schedule.apply(optimizer.param_groups, step, span.end)
        self._lrs = [g["lr"] for g in optimizer.param_groups]
        return entered

    def _enter(self, span: PhaseSpan) -> None:
        if self._guard is not None:
            self._guard.check()  # the phase that ends left its frozen parts bit-identical
        ph = span.phase
        self._set_frozen(ph)
        held = [m for p in ph.train for m in held_elsewhere_problems(self.parts, p, f"phase {ph.name!r}")]
        if held:
            raise ConfigError(held)
        optimizer = self.optimizer = self._phase_optimizer(ph)
        was_training = set(self.plan.phases[span.index - 1].train) if span.index > 0 else set()
        for g in optimizer.param_groups:
            g.update(base_lr=g["lr"], start_step=span.start, warm=g.get("part") not in was_training)
        self.span, self._restored, self._lrs = span, None, None
        enter_phase(self.task, ph.task_options, span.start)  # e.g. a schedule counted from the phase restarts
        if self.use_guard:
            self._guard = self.parts.guard()
            self._guard.snapshot()

    def _set_frozen(self, ph: Phase) -> None:
        """Exactly the parts the phase does not train are frozen, with the phase's modes; parts whose
        state is already right are not touched."""
        thaw = [n for n in self.parts.names if n in ph.train and self.parts.is_frozen(n)]
        cold = [n for n in self.parts.names
                if n not in ph.train and self.parts.freeze_modes(n) != (ph.norm, ph.dropout)]
        if thaw:
            self.parts.unfreeze(*thaw)
        if cold:
            self.parts.freeze(*cold, norm=ph.norm, dropout=ph.dropout)

    def _phase_optimizer(self, ph: Phase) -> Optimizer:
        """The run's optimizer with the phase's options set in place; a new one (``rebuild=True``)
        only when the phase needs another class or layout, state carried where the class stays."""
        opts, default = self._options(ph)
        old = self.optimizer
        if old is None:
            return self._build(ph)
        if isinstance(old, OptimizerSet) == ph.separate and reconfigure(old, self.parts, opts, default):
            return old
        if not self.rebuild:  # layout_problems() refused such plans: only a foreign optimizer gets here
            raise ConfigError([f"phase {ph.name!r}: the optimizer cannot take this phase's options in place"])
        new = self._build(ph)
        carry_state(old, new)
        before = {g["part"]: type(o).__name__ for o in optimizers_of(old) for g in o.param_groups if "part" in g}
        after = {g["part"]: type(o).__name__ for o in optimizers_of(new) for g in o.param_groups if "part" in g}
        switched = [f"{p} ({before[p]} -> {after[p]})" for p in ph.train if before.get(p, after.get(p)) != after.get(p)]
        if switched:
            warnings.warn(f"phase {ph.name!r} changes the optimizer of {', '.join(switched)}: their optimizer "
                          "state starts fresh", RuntimeWarning, stacklevel=4)
        return new

    def _check_lrs(self, step: int) -> None:
        groups = self.optimizer.param_groups if self.optimizer is not None else []
        moved = [f"{g.get('part', f'group {i}')} ({was:.3g} -> {g['lr']:.3g})"
                 for i, (g, was) in enumerate(zip(groups, self._lrs or [], strict=False)) if g["lr"] != was]
        if moved:
            raise ConfigError([f"step {step}: the learning rate of {', '.join(moved[:4])} was changed outside the "
                               "plan (an LR scheduler stepping the same optimizer?); the plan sets every part's "
                               "learning rate: give warmup and decay as Phase(schedule=pw.LRSchedule(...)) and "
                               "attach no scheduler"])

    def context(self, step: int, epoch: int = 0) -> StepContext:
        """What a task's ``loss`` receives at ``step``: the phase's name and task options."""
        span = self.span or self.span_at(step)
        return StepContext(step, epoch, span.phase.name, span.phase.task_options)

    def finish(self) -> None:
        """The guard's last check (``guard=True``): the phase that ends the run left its frozen parts
        bit-identical (:class:`~partwise.FrozenPartChanged` otherwise)."""
        if self._guard is not None:
            self._guard.check()

    # -- state --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The phase in force, the freeze state, the plan's fingerprint and the plan changes accepted
        (plain types: safe for ``torch.load(weights_only=True)``)."""
        index = self.span.index if self.span is not None else self._restored if self._restored is not None else -1
        return {"format": FORMAT, "phase": index, "frozen": self.parts.state_dict()["frozen"],
                "plan": self.fingerprint(), "plan_changes": list(self.plan_changes)}

    def load_state_dict(self, state: Mapping[str, Any], allow_plan_change: bool = False,
                        step: int | None = None) -> list[str]:
        """Restore a :meth:`state_dict`: refuse another plan than the one it was saved under (a
        :class:`~partwise.ConfigError` naming every difference) unless ``allow_plan_change``, then
        freeze exactly what was frozen, so optimizer state loaded next fits the groups it was saved
        from. The next :meth:`before_step` enters the phase of its step. Returns the plan changes
        accepted now (also kept in :attr:`plan_changes`, as ``"step N: ..."`` when ``step``, the step
        the run resumes at, is given; checked once ``steps_per_epoch`` is known)."""
        if not isinstance(state, Mapping) or state.get("format") != FORMAT:
            raise ConfigError([f"plan state: not a PlanDriver state dict (format {FORMAT!r}); give what "
                               "PlanDriver.state_dict() returned"])
        self.plan_changes = list(state.get("plan_changes", []))
        changes: list[str] = []
        if self.steps_per_epoch is not None or all(ph.steps is not None for ph in self.plan.phases):
            changes = self._check_fingerprint(state["plan"], allow_plan_change, step)
        else:
            self._pending = (state["plan"], allow_plan_change, step)
        self.parts.load_state_dict({"frozen": state["frozen"]})
        index = int(state["phase"])
        self.span, self._lrs, self._guard = None, None, None
        self._restored = index if index >= 0 else None
        return changes

    def save_file(self, folder: str | Path, **extra: Any) -> Path:
        """Write :meth:`state_dict` (and ``extra`` plain values) to ``folder/partwise_plan.json``
        (written beside and renamed into place)."""
        path = Path(folder) / STATE_FILE
        write_text_atomic(path, json.dumps({**self.state_dict(), **extra}, indent=1))
        return path

    def load_file(self, folder: str | Path, allow_plan_change: bool = False, step: int | None = None,
                  where: str = "resume") -> dict[str, Any]:
        """:meth:`load_state_dict` from a folder :meth:`save_file` wrote; returns its ``extra`` values.
        A folder without the file is a :class:`~partwise.ConfigError` (``where`` names the option)."""
        path = Path(folder) / STATE_FILE
        if not path.is_file():
            raise ConfigError([f"{where}: {folder} has no {STATE_FILE}: it was not saved while a partwise plan ran, "
                               "so the phase it stopped in is unknown; resume from a checkpoint saved with the plan"])
        state = json.loads(path.read_text(encoding="utf-8"))
        ours = {k: state.pop(k) for k in list(state) if k in ("format", "phase", "frozen", "plan", "plan_changes")}
        self.load_state_dict(ours, allow_plan_change, step=step)
        return state

    def _check_fingerprint(self, saved: Mapping[str, Any], allow: bool, step: int | None) -> list[str]:
        current = plan_fingerprint(self.plan, self._steps())
        if self.steps_per_epoch is None:  # steps-only plan: epochs play no part
            saved = {**saved, "steps_per_epoch": current["steps_per_epoch"]}
        changes = plan_differences(saved, current)
        if not changes:
            return []
        if not allow:
            raise ConfigError([f"resume: {c}" for c in changes] + [
                "resume with the plan the run was started with, or allow the change (allow_plan_change=True; "
                "partwise resume --allow-plan-change) to continue under this one"])
        warnings.warn("resuming under a changed plan (allow_plan_change=True): " + "; ".join(changes),
                      RuntimeWarning, stacklevel=3)
        recorded = [f"step {step}: {c}" for c in changes] if step is not None else changes
        self.plan_changes += recorded
        return recorded
