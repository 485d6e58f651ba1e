"""Teacher forcing and scheduled sampling for decoders that follow :mod:`partwise.seq2seq`'s protocol.

A plan phase sets it as a task option, ``Phase(..., task_options={"teacher_forcing": tf})``; the
seq2seq tasks read it from the step context with :func:`phase_teacher_forcing`. The core
(:class:`~partwise.Plan`, :class:`~partwise.Trainer`) carries the option without knowing what it is.

Schedules give the teacher-forcing ratio ``eps_i`` (probability of feeding the gold previous token)
at training step ``i``; the decay forms are those of Bengio et al. 2015, "Scheduled Sampling for
Sequence Prediction with Recurrent Neural Networks", section 2.4. The two-pass parallel variant
follows Mihaylova & Martins 2019, "Scheduled Sampling for Transformers".
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from partwise.seq2seq._protocol import PAD, Memory

__all__ = [
    "TEACHER_FORCING", "TeacherForcing", "TeacherForcingStats", "TFSchedule", "tf_schedule_from_dict",
    "tf_constant", "tf_linear", "tf_exponential", "tf_inverse_sigmoid", "phase_teacher_forcing",
    "ConstantTFSchedule", "LinearTFSchedule", "ExponentialTFSchedule", "InverseSigmoidTFSchedule",
]


TEACHER_FORCING = "teacher_forcing"  # the key of a phase's task_options that holds its TeacherForcing


def phase_teacher_forcing(task_options: Mapping[str, Any] | None, default: Any = None) -> Any:
    """The :class:`TeacherForcing` a phase sets in its ``task_options``, else ``default`` (the task's own).

    Examples:
        >>> tf = TeacherForcing(0.5)
        >>> phase_teacher_forcing({"teacher_forcing": tf}) is tf, phase_teacher_forcing({}, "own")
        (True, 'own')
    """
    found = (task_options or {}).get(TEACHER_FORCING)
    return found if found is not None else default


@runtime_checkable
class TFSchedule(Protocol):
    """A teacher-forcing ratio schedule: ``schedule(step) -> float`` in ``[0, 1]`` (not a learning-rate
    schedule: that is :class:`~partwise.LRSchedule`)."""

    def __call__(self, step: int) -> float: ...

    def describe(self) -> str: ...

    def to_dict(self) -> dict[str, Any]: ...


def _in_range(value: object, name: str, where: str, lo: float, hi: float, *, open_lo: bool = False,
              open_hi: bool = False) -> float:
    """``value`` as a float if it is a real number in the interval, else a TypeError/ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{where}: {name}={value!r} must be a real number, got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v) or v < lo or v > hi or (open_lo and v == lo) or (open_hi and v == hi):
        interval = f"{'(' if open_lo else '['}{lo}, {hi}{')' if open_hi else ']'}"
        raise ValueError(f"{where}: {name}={value!r} is outside the valid range {interval}")
    return v


def _step(step: object) -> int:
    if isinstance(step, bool):
        raise TypeError(f"schedule step={step!r} must be a non-negative int, got bool")
    try:
        i = operator.index(step)  # type: ignore[arg-type]  # int and integer numpy/torch scalars
    except TypeError:
        kind = type(step).__name__
        raise TypeError(f"schedule step={step!r} must be a non-negative int, got {kind}") from None
    if i < 0:
        raise ValueError(f"schedule step={i} is negative; pass the trainer's step count (0, 1, 2, ...)")
    return i


@dataclass(frozen=True)
class ConstantTFSchedule:
    """``eps_i = p`` at every step. Build with :func:`tf_constant`."""

    p: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "p", _in_range(self.p, "p", "tf_constant()", 0.0, 1.0))

    def __call__(self, step: int) -> float:
        _step(step)
        return self.p

    def describe(self) -> str:
        return f"eps_i = {self.p}"

    def to_dict(self) -> dict[str, Any]:
        return {"name": "constant", "p": self.p}


@dataclass(frozen=True)
class LinearTFSchedule:
    """``eps_i = max(eps, k - c*i)`` (Bengio et al. 2015). Build with :func:`tf_linear`."""

    c: float
    k: float = 1.0
    eps: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "c", _in_range(self.c, "c", "tf_linear()", 0.0, math.inf))
        object.__setattr__(self, "k", _in_range(self.k, "k", "tf_linear()", 0.0, 1.0))
        object.__setattr__(self, "eps", _in_range(self.eps, "eps", "tf_linear()", 0.0, self.k))

    def __call__(self, step: int) -> float:
        return max(self.eps, self.k - self.c * _step(step))

    def describe(self) -> str:
        return f"eps_i = max({self.eps}, {self.k} - {self.c}*i)"

    def to_dict(self) -> dict[str, Any]:
        return {"name": "linear", "c": self.c, "k": self.k, "eps": self.eps}


@dataclass(frozen=True)
class ExponentialTFSchedule:
    """``eps_i = k**i`` with ``0 < k < 1`` (Bengio et al. 2015). Build with :func:`tf_exponential`."""

    k: float

    def __post_init__(self) -> None:
        k = _in_range(self.k, "k", "tf_exponential()", 0.0, 1.0, open_lo=True, open_hi=True)
        object.__setattr__(self, "k", k)

    def __call__(self, step: int) -> float:
        return self.k ** _step(step)

    def describe(self) -> str:
        return f"eps_i = {self.k}**i"

    def to_dict(self) -> dict[str, Any]:
        return {"name": "exponential", "k": self.k}


@dataclass(frozen=True)
class InverseSigmoidTFSchedule:
    """``eps_i = k / (k + exp(i/k))``, ``k >= 1`` (Bengio et al. 2015). Build with :func:`tf_inverse_sigmoid`."""

    k: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "k", _in_range(self.k, "k", "tf_inverse_sigmoid()", 1.0, math.inf))

    def __call__(self, step: int) -> float:
        x = _step(step) / self.k
        return 0.0 if x > 700.0 else self.k / (self.k + math.exp(x))  # exp overflows past ~709

    def describe(self) -> str:
        return f"eps_i = {self.k} / ({self.k} + exp(i/{self.k}))"

    def to_dict(self) -> dict[str, Any]:
        return {"name": "inverse_sigmoid", "k": self.k}


def tf_constant(p: float) -> ConstantTFSchedule:
    """Always feed gold with probability ``p`` (the tutorial's ``teacher_forcing_ratio``).

    Examples:
        >>> tf_constant(0.5)(1000)
        0.5
    """
    return ConstantTFSchedule(p)


def tf_linear(c: float, k: float = 1.0, eps: float = 0.0) -> LinearTFSchedule:
    """Linear decay ``eps_i = max(eps, k - c*i)``, the paper's form (``0 <= eps <= k <= 1``, ``c >= 0``).

    To go from ``start`` to ``end`` over ``N`` steps: ``tf_linear(c=(start - end) / N, k=start, eps=end)``.

    Examples:
        >>> tf_linear(c=0.001)(250)
        0.75
    """
    return LinearTFSchedule(c, k, eps)


def tf_exponential(k: float) -> ExponentialTFSchedule:
    """Exponential decay ``eps_i = k**i`` with ``0 < k < 1``.

    Examples:
        >>> tf_exponential(0.5)(2)
        0.25
    """
    return ExponentialTFSchedule(k)


def tf_inverse_sigmoid(k: float) -> InverseSigmoidTFSchedule:
    """Inverse sigmoid decay ``eps_i = k / (k + exp(i/k))`` with ``k >= 1``; ``eps_0 = k/(k+1)``.

    Examples:
        >>> round(tf_inverse_sigmoid(1.0)(0), 3)
        0.5
    """
    return InverseSigmoidTFSchedule(k)


_SCHEDULES: dict[str, Callable[..., TFSchedule]] = {
    "constant": tf_constant,
    "linear": tf_linear,
    "exponential": tf_exponential,
    "inverse_sigmoid": tf_inverse_sigmoid,
}
_REQUIRED = {"constant": {"p"}, "linear": {"c"}, "exponential": {"k"}, "inverse_sigmoid": {"k"}}
_OPTIONAL = {"linear": {"k", "eps"}}


def tf_schedule_from_dict(config: Mapping[str, Any]) -> TFSchedule:
    """Rebuild a schedule from ``schedule.to_dict()`` or a config entry.

    Examples:
        >>> tf_schedule_from_dict({"name": "inverse_sigmoid", "k": 2000})
        InverseSigmoidTFSchedule(k=2000.0)
    """
    if not isinstance(config, Mapping):
        raise TypeError(f"schedule config {config!r} must be a mapping like {{'name': 'linear', 'c': 1e-4}}")
    name = config.get("name")
    if name not in _SCHEDULES:
        raise ValueError(f"schedule config name={name!r} is not one of {sorted(_SCHEDULES)}")
    keys = set(config) - {"name"}
    required, allowed = _REQUIRED[name], _REQUIRED[name] | _OPTIONAL.get(name, set())
    if keys - allowed or required - keys:
        raise ValueError(
            f"schedule config {dict(config)!r}: {name!r} takes keys {sorted(allowed)} "
            f"(required {sorted(required)}); unknown {sorted(keys - allowed)}, "
            f"missing {sorted(required - keys)}"
        )
    return _SCHEDULES[name](**{key: config[key] for key in keys})


@dataclass(frozen=True)
class TeacherForcingStats:
    """What the last :class:`TeacherForcing` call did.

    Attributes:
        step: the training step passed in.
        ratio: the schedule's teacher-forcing ratio at that step.
        gold_fraction: share of choice positions (``t >= 1``, gold not PAD) that got the gold token.
        parallel: whether the logits came from parallel decoder calls (no per-token loop).
    """

    step: int
    ratio: float
    gold_fraction: float
    parallel: bool


_PER = ("sequence", "token")
_COUNT_FROM = ("run", "phase")
_MODE = ("exact", "two_pass")


class TeacherForcing:
    """Teacher forcing / scheduled sampling for a decoder following the seq2seq protocol.

    Args:
        schedule: a :class:`TFSchedule` giving the gold-token probability per step, or a number for
            :func:`tf_constant`.
        per: ``"sequence"``: one draw per call (i.e. per **batch**, as in the PyTorch seq2seq
            tutorial): the whole batch is teacher-forced (one parallel call) with probability p, else
            free-running stepwise. ``"token"``: each position of each example draws independently.
        mode: ``"exact"``: stepwise, a non-gold input is the model's prediction at the previous step
            of this same run. ``"two_pass"`` (``per="token"`` only): a no-grad teacher-forced parallel
            pass predicts every position, gold and predicted inputs are mixed, and a second parallel
            pass with gradient gives the logits (Mihaylova & Martins 2019). In train mode dropout makes
            the first pass stochastic, so its predictions differ from an eval-mode pass.
        sample: where a prediction is fed, sample it from ``softmax(logits)`` (temperature 1, using
            ``generator``) instead of taking the argmax.
        count_from: where the schedule's step 0 is. ``"run"`` (default): the run's first step, so a
            schedule given to a later phase starts partway down its curve (at that phase's first
            step). ``"phase"``: the first step of the phase in force — :class:`~partwise.Trainer` calls
            :meth:`enter_phase` at every phase start (and on resume), which sets :attr:`origin` (a
            phase's own directly, as a task option; a task's own through the task's ``enter_phase``).

    Position 0 always gets ``tgt_in[:, 0]`` (BOS), positions whose gold input is PAD keep PAD, and
    predictions are detached. When every input is gold (ratio 1, or the draw says so) the decoder runs
    once in parallel. Ratios of exactly 0 or 1 draw no random numbers; otherwise draws come from
    ``generator`` or the global torch RNG.

    Examples:
        >>> tf = TeacherForcing(tf_inverse_sigmoid(100.0), per="token", mode="two_pass")
        >>> round(tf.ratio(0), 3)
        0.99
    """

    def __init__(
        self, schedule: TFSchedule | float = 1.0, per: str = "token", mode: str = "exact", sample: bool = False,
        count_from: str = "run",
    ) -> None:
        if isinstance(schedule, numbers.Real) and not isinstance(schedule, bool):
            schedule = tf_constant(float(schedule))
        if not isinstance(schedule, TFSchedule):
            raise TypeError(
                f"TeacherForcing schedule={schedule!r} must be a number, a schedule such as "
                "tf_linear(c=1e-4) or tf_inverse_sigmoid(2000), or an object with __call__(step), "
                "describe() and to_dict()"
            )
        if per not in _PER:
            raise ValueError(f"TeacherForcing per={per!r} must be one of {_PER}")
        if mode not in _MODE:
            raise ValueError(f"TeacherForcing mode={mode!r} must be one of {_MODE}")
        if per == "sequence" and mode == "two_pass":
            raise ValueError(
                "TeacherForcing per='sequence' with mode='two_pass' is not a valid combination (two-pass "
                "mixes tokens per position); use per='token' with mode='two_pass' or 'exact', "
                "or per='sequence' with mode='exact'"
            )
        if not isinstance(sample, bool):
            raise TypeError(f"TeacherForcing sample={sample!r} must be True or False")
        if count_from not in _COUNT_FROM:
            raise ValueError(f"TeacherForcing count_from={count_from!r} must be one of {_COUNT_FROM}")
        self.schedule, self.per, self.mode, self.sample = schedule, per, mode, sample
        self.count_from = count_from
        self.origin = 0  # the training step the schedule counts from (see count_from)
        self.last_stats: TeacherForcingStats | None = None

    def __repr__(self) -> str:
        return (
            f"TeacherForcing(schedule={self.schedule!r}, per={self.per!r}, mode={self.mode!r}, "
            f"sample={self.sample}" + (f", count_from={self.count_from!r})" if self.count_from != "run" else ")")
        )

    def enter_phase(self, start: int) -> None:
        """A phase begins at training step ``start``: with ``count_from="phase"`` the schedule counts
        from there (the trainer calls this; with ``"run"`` it changes nothing).

        Examples:
            >>> tf = TeacherForcing(tf_linear(c=0.1, k=1.0), count_from="phase")
            >>> tf.enter_phase(100); tf.ratio(100), round(tf.ratio(105), 2)
            (1.0, 0.5)
        """
        self.origin = int(start) if self.count_from == "phase" else 0

    def ratio(self, step: int) -> float:
        """The probability of feeding a gold token at training step ``step`` (counted from :attr:`origin`)."""
        p = self.schedule(max(_step(step) - self.origin, 0))
        if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0.0 <= p <= 1.0:
            raise ValueError(
                f"schedule {self.schedule!r} returned {p!r} at step {step}; it must return a float in [0, 1]"
            )
        return float(p)

    def to_dict(self) -> dict[str, Any]:
        """A plain dict for configs and checkpoints; :meth:`from_dict` inverts it."""
        schedule = self.schedule.to_dict()
        out = {"schedule": schedule, "per": self.per, "mode": self.mode, "sample": self.sample}
        return out if self.count_from == "run" else {**out, "count_from": self.count_from}

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> TeacherForcing:
        """Build from :meth:`to_dict` output; ``schedule`` may be a dict (see :func:`tf_schedule_from_dict`)
        or a number.

        Examples:
            >>> TeacherForcing.from_dict({"schedule": {"name": "constant", "p": 0.5}, "per": "sequence"}).per
            'sequence'
        """
        unknown = set(config) - {"schedule", "per", "mode", "sample", "count_from"}
        if unknown:
            raise ValueError(
                f"TeacherForcing config has unknown keys {sorted(unknown)}; valid: schedule, per, mode, sample, "
                "count_from"
            )
        kwargs = dict(config)
        if isinstance(kwargs.get("schedule"), Mapping):
            kwargs["schedule"] = tf_schedule_from_dict(kwargs["schedule"])
        return cls(**kwargs)

    def __call__(self, decoder: Any, memory: Memory, tgt_in: Tensor, *, step: int,
                 generator: torch.Generator | None = None) -> Tensor:
        """Logits ``(B, T, V)`` for every position of ``tgt_in`` (``(B, T)`` gold inputs, BOS first).

        Args:
            decoder: follows the seq2seq protocol (parallel ``__call__``, ``step``, ``initial_state``).
            memory: the encoder's output for this batch; gradient flows into it.
            tgt_in: gold decoder inputs, PAD-padded.
            step: the trainer's step, fed to the schedule.
            generator: source of the random draws; the global torch RNG when ``None``.
        """
        _check_inputs(decoder, memory, tgt_in)
        p = self.ratio(step)
        gold = _gold_mask(tgt_in, p, self.per, generator)
        all_gold = bool(gold.all())
        real = tgt_in[:, 1:] != PAD
        choices, fed = int(real.sum()), int((gold[:, 1:] & real).sum())
        self.last_stats = TeacherForcingStats(
            step=_step(step), ratio=p, gold_fraction=fed / choices if choices else 1.0,
            parallel=all_gold or self.mode == "two_pass",
        )
        if all_gold:
            return decoder(tgt_in, memory, decoder.initial_state(memory))
        if self.mode == "two_pass":
            return self._two_pass(decoder, memory, tgt_in, gold, generator)
        return self._stepwise(decoder, memory, tgt_in, gold, generator)

    def _choose(self, logits: Tensor, generator: torch.Generator | None) -> Tensor:
        """Argmax (or a sample) of ``logits (..., V)``, without gradient."""
        logits = logits.detach()
        if not self.sample:
            return logits.argmax(-1)
        # Inverse-CDF sampling from one uniform per row: works whatever device the generator is on.
        cdf = torch.softmax(logits.float(), dim=-1).cumsum(-1)
        u = _uniform((*cdf.shape[:-1], 1), generator, logits.device)
        return (cdf < u).sum(-1).clamp(max=logits.shape[-1] - 1)

    def _stepwise(self, decoder: Any, memory: Memory, tgt_in: Tensor, gold: Tensor,
                  generator: torch.Generator | None) -> Tensor:
        state = decoder.initial_state(memory)
        token, outputs = tgt_in[:, 0], []
        for t in range(tgt_in.shape[1]):
            logits, state = decoder.step(token, memory, state)
            outputs.append(logits)
            if t + 1 < tgt_in.shape[1]:
                token = torch.where(gold[:, t + 1], tgt_in[:, t + 1], self._choose(logits, generator))
        return torch.stack(outputs, dim=1)

    def _two_pass(self, decoder: Any, memory: Memory, tgt_in: Tensor, gold: Tensor,
                  generator: torch.Generator | None) -> Tensor:
        with torch.no_grad():
            first = decoder(tgt_in, memory, decoder.initial_state(memory))
        predicted = self._choose(first[:, :-1], generator)  # input t is the prediction made at t-1
        mixed = torch.cat([tgt_in[:, :1], torch.where(gold[:, 1:], tgt_in[:, 1:], predicted)], dim=1)
        return decoder(mixed, memory, decoder.initial_state(memory))


def _check_inputs(decoder: Any, memory: Memory, tgt_in: Tensor) -> None:
    for name in ("step", "initial_state"):
        if not callable(getattr(decoder, name, None)):
            raise TypeError(
                f"decoder {type(decoder).__name__} has no {name}() method; implement the Decoder "
                "protocol of partwise.seq2seq"
            )
    if not isinstance(tgt_in, Tensor) or tgt_in.dim() != 2 or tgt_in.dtype != torch.long or tgt_in.shape[1] == 0:
        got = f"{tuple(tgt_in.shape)} {tgt_in.dtype}" if isinstance(tgt_in, Tensor) else type(tgt_in).__name__
        raise ValueError(
            f"tgt_in must be a (batch, length >= 1) long tensor of gold inputs starting with BOS, got {got}"
        )
    if tgt_in.shape[0] != memory.batch_size:
        raise ValueError(
            f"tgt_in has batch size {tgt_in.shape[0]} but memory has {memory.batch_size}; pass the same batch"
        )


def _gold_mask(tgt_in: Tensor, p: float, per: str, generator: torch.Generator | None) -> Tensor:
    """``(B, T)`` bool, True where the gold input is fed. Column 0 and PAD positions are always gold."""
    fixed = tgt_in == PAD
    fixed[:, 0] = True
    if p >= 1.0:
        return torch.ones_like(fixed)
    if p <= 0.0:
        return fixed
    shape = (1, 1) if per == "sequence" else tuple(tgt_in.shape)
    return fixed | (_uniform(shape, generator, tgt_in.device) < p)


def _uniform(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> Tensor:
    """U[0, 1) draws from ``generator`` (any device) or the global RNG of ``device``, moved to ``device``."""
    source = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=source).to(device)
