"""Plans and learning-rate schedules, without training."""

from __future__ import annotations

import math

import pytest
from torch import nn

import partwise as pw
from core_helpers import EncDec


def test_spans_from_epochs_and_steps():
    plan = pw.Plan([pw.Phase("a", epochs=2, train={"decoder": 1e-3}), pw.Phase("b", steps=5, train={"encoder": 1e-4})])
    spans = plan.spans(steps_per_epoch=10)
    assert [(s.start, s.end) for s in spans] == [(0, 20), (20, 25)]
    assert plan.span_at(19, 10).phase.name == "a" and plan.span_at(20, 10).phase.name == "b"
    assert plan.total_steps(10) == 25


def test_invalid_plan_reports_every_problem_at_once():
    with pytest.raises(pw.ConfigError) as e:
        pw.Plan([pw.Phase("x", train={}), pw.Phase("y", epochs=1, steps=2, train={"decoder": -1.0})])
    errors = e.value.errors
    assert any("exactly one of epochs= or steps=" in m and "'x'" in m for m in errors)
    assert any("train: empty" in m for m in errors)
    assert any("'y'" in m and "exactly one" in m for m in errors)
    assert any("learning rate -1.0" in m for m in errors)


def test_unknown_part_in_plan_is_reported(encdec):
    plan = pw.Plan([pw.Phase("x", epochs=1, train={"decodr": 1e-3})])
    with pytest.raises(pw.ConfigError, match="unknown part 'decodr'"):
        plan.check(pw.Parts(encdec))


def test_describe_gives_trainable_counts_lr_and_weight_decay_per_group():
    model = EncDec()
    parts = pw.Parts(model)
    plan = pw.Plan.fine_tune(head="decoder", body="encoder", lr=1e-3, epochs=3, body_lr_ratio=0.01)
    text = plan.describe(parts, steps_per_epoch=4)
    dec, enc = parts["decoder"].numel, parts["encoder"].numel
    lines = text.splitlines()
    assert lines[0].startswith("phase 0 'frozen body': 1 epoch(s), steps 0-4")
    assert f"trainable {dec:,} params" in lines[0]
    assert "frozen: encoder" in lines[0]
    phase1 = next(i for i, line in enumerate(lines) if line.startswith("phase 1"))
    assert f"trainable {dec + enc:,}" in lines[phase1]
    enc_line = next(line for line in lines[phase1:] if line.strip().startswith("encoder"))
    assert "lr 1e-05" in enc_line and "wd 0.01" in enc_line and "without decay" in enc_line
    assert all(p.requires_grad for p in model.parameters())  # describe changes nothing


def test_gradual_unfreezing_uses_discriminative_learning_rates():
    plan = pw.Plan.gradual(["head", "top", "middle"], epochs_each=1, lr=1e-3, lr_decay=2.6)
    assert [list(p.train) for p in plan.phases] == [["head"], ["head", "top"], ["head", "top", "middle"]]
    last = plan.phases[-1].train
    assert last["top"] == pytest.approx(1e-3 / 2.6) and last["middle"] == pytest.approx(1e-3 / 2.6**2)


def test_lr_schedule_shapes():
    cos = pw.LRSchedule(warmup=4, decay="cosine", min_ratio=0.1)
    assert [cos.factor(t, 104) for t in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert cos.factor(54, 104) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert cos.factor(104, 104) == pytest.approx(0.1)
    # a part continuing from the previous phase skips the warmup: full LR while new parts warm up
    assert [cos.factor(t, 104, warm=False) for t in range(5)] == [1.0] * 5
    assert pw.LRSchedule().factor(50, 100) == 1.0
    with pytest.raises(ValueError, match="decay='step'"):
        pw.LRSchedule(decay="step")  # type: ignore[arg-type]


def test_every_phase_optimizer_and_learning_rate_checked_before_training():
    model = nn.Sequential()
    model.add_module("enc", nn.Linear(2, 2))
    model.add_module("dec", nn.Linear(2, 2))
    parts = pw.Parts(model)
    with pytest.raises(pw.ConfigError) as e:
        pw.Plan([pw.Phase("a", epochs=1, train={"dec": True}), pw.Phase("b", epochs=1, train={"dec": float("nan")})])
    assert "True" in str(e.value) and "nan" in str(e.value)
    plan = pw.Plan([pw.Phase("a", epochs=1, train={"dec": 1e-3}),
                    pw.Phase("b", epochs=1, train={"dec": 1e-3, "enc": 1e-4}, optimizer={"momentum": 0.9})])
    with pytest.raises(pw.ConfigError, match=r"phases\[1\] \('b'\).optimizer.*AdamW has no option.*momentum"):
        pw.Trainer(model, parts, plan, lambda m, b: m(b).sum())


def test_selectors_must_be_strings():
    model = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(pw.PartError, match="selector 3 is a int.*strings") as e:
        pw.Parts(model, {"a": 3, "b": None})  # type: ignore[dict-item]
    assert "'b'" in str(e.value)
