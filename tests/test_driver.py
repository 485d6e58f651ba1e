"""The plan driver in a hand-written loop: the same guarantees as partwise's Trainer, in three lines."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import partwise as pw
from core_helpers import EncDec, snapshot


def make_plan(warmup: int = 2) -> pw.Plan:
    return pw.Plan([
        pw.Phase("decoder only", steps=4, train={"decoder": 1e-2}),
        pw.Phase("all", steps=4, train={"decoder": 1e-2, "encoder": 1e-3}, schedule=pw.LRSchedule(warmup=warmup)),
    ])


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    return torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g)


def loop(model: nn.Module, driver: pw.PlanDriver, optimizer: Any, steps: range,
         record: list[Any] | None = None) -> None:
    for step in steps:
        driver.before_step(step)
        torch.manual_seed(100 + step)  # the trained encoder's dropout draws the same numbers in every run
        model.train()
        x, y = batch(step)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        if record is not None:
            record.append((step, driver.span.phase.name, model.encoder[1].training,
                           {g["part"]: g["lr"] for g in optimizer.param_groups if not g["no_decay"]},
                           pw.state_bytes(optimizer, driver.parts)["encoder"]))
        optimizer.step()
        optimizer.zero_grad()


def test_hand_written_loop_freezes_pins_and_unfreezes_with_its_own_warmup():
    torch.manual_seed(0)
    model = EncDec()
    driver = pw.PlanDriver(pw.Parts(model), make_plan(), guard=True)
    optimizer = driver.build_optimizer()
    before = snapshot(model.encoder)
    rows: list[Any] = []
    loop(model, driver, optimizer, range(4), rows)
    assert all(torch.equal(v, snapshot(model.encoder)[k]) for k, v in before.items())  # weights and BN stats
    loop(model, driver, optimizer, range(4, 8), rows)
    driver.finish()
    assert [r[2] for r in rows] == [False] * 4 + [True] * 4  # the frozen BatchNorm stayed in eval
    assert [r[4] for r in rows[:4]] == [0] * 4 and rows[4][4] == 0 < rows[5][4]  # no state while frozen
    assert [round(r[3]["encoder"] / 1e-3, 3) for r in rows[4:]] == [0.5, 1.0, 1.0, 1.0]
    assert {r[3]["decoder"] for r in rows} == {1e-2}
    assert not torch.equal(before["p:0.weight"], model.encoder[0].weight)
    assert driver.optimizer is optimizer  # one optimizer for the whole run


@pytest.mark.parametrize("stop", [2, 4, 6])  # mid-phase, at the transition, after it
def test_hand_written_loop_resumes_bit_identical_from_state_dicts(stop):
    torch.manual_seed(0)
    full = EncDec()
    driver = pw.PlanDriver(pw.Parts(full), make_plan())
    loop(full, driver, driver.build_optimizer(), range(8))

    torch.manual_seed(0)
    first = EncDec()
    driver = pw.PlanDriver(pw.Parts(first), make_plan())
    optimizer = driver.build_optimizer()
    loop(first, driver, optimizer, range(stop))
    saved = {"model": first.state_dict(), "optimizer": optimizer.state_dict(), "plan": driver.state_dict()}
    torch.save(saved, buf := __import__("io").BytesIO())
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)  # plain types: safe to load

    model = EncDec()
    model.load_state_dict(saved["model"])
    driver = pw.PlanDriver(pw.Parts(model), make_plan())
    driver.load_state_dict(saved["plan"])  # the freeze state first: the optimizer's state lands in its groups
    optimizer = driver.build_optimizer()
    optimizer.load_state_dict(saved["optimizer"])
    loop(model, driver, optimizer, range(stop, 8))
    assert all(torch.equal(a, b) for a, b in zip(full.state_dict().values(), model.state_dict().values(), strict=True))


def test_a_changed_plan_is_refused_on_load_unless_allowed():
    model = EncDec()
    driver = pw.PlanDriver(pw.Parts(model), make_plan())
    loop(model, driver, driver.build_optimizer(), range(3))
    state = driver.state_dict()
    with pytest.raises(pw.ConfigError, match=r"phase 1 \('all'\).schedule"):
        pw.PlanDriver(pw.Parts(EncDec()), make_plan(warmup=5)).load_state_dict(state)
    other = pw.PlanDriver(pw.Parts(EncDec()), make_plan(warmup=5))
    with pytest.warns(RuntimeWarning, match="changed plan"):
        changes = other.load_state_dict(state, allow_plan_change=True, step=3)
    assert changes == other.plan_changes and changes[0].startswith("step 3: phase 1 ('all').schedule")


def test_epoch_phases_need_steps_per_epoch_and_a_fingerprint_waits_for_it():
    plan = pw.Plan([pw.Phase("a", epochs=1, train={"decoder": 1e-3}),
                    pw.Phase("b", epochs=1, train={"encoder": 1e-3, "decoder": 1e-3})])
    driver = pw.PlanDriver(pw.Parts(EncDec()), plan)
    with pytest.raises(pw.ConfigError, match="steps_per_epoch: unknown"):
        driver.before_step(0)
    driver.set_steps_per_epoch(5)
    driver.build_optimizer()
    assert driver.before_step(4) and driver.span.index == 0  # the first step entered: phase a (steps 0-4)
    assert driver.before_step(5) and driver.span.phase.name == "b"
    state = driver.state_dict()
    later = pw.PlanDriver(pw.Parts(EncDec()), plan)
    later.load_state_dict(state)  # Lightning restores callbacks before it knows the epoch length
    with pytest.raises(pw.ConfigError, match="steps per epoch: checkpoint 5, now 6"):
        later.set_steps_per_epoch(6)


def test_a_scheduler_stepping_the_same_optimizer_is_reported():
    model = EncDec()
    driver = pw.PlanDriver(pw.Parts(model), make_plan())
    optimizer = driver.build_optimizer()
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    driver.before_step(0)
    optimizer.step()
    scheduler.step()
    with pytest.raises(pw.ConfigError, match=r"step 1: the learning rate of .* was changed outside the plan"):
        driver.before_step(1)


def test_a_plan_that_needs_another_optimizer_mid_run_is_refused_up_front():
    plan = pw.Plan([pw.Phase("a", steps=1, train={"decoder": 1e-3}),
                    pw.Phase("b", steps=1, train={"decoder": {"name": "sgd", "lr": 0.1}})])
    with pytest.raises(pw.ConfigError, match="part 'decoder' trains with AdamW in phase 0, SGD in phase 1"):
        pw.PlanDriver(pw.Parts(EncDec()), plan)
    pw.PlanDriver(pw.Parts(EncDec()), plan, rebuild=True)  # partwise's Trainer rebuilds it


def test_a_part_that_joins_later_with_its_own_class_gets_it_from_the_start():
    """Separate optimizers: the encoder's (empty) optimizer is already the SGD it will train with."""
    plan = pw.Plan([pw.Phase("a", steps=1, train={"decoder": 1e-3}, separate=True),
                    pw.Phase("b", steps=1, separate=True,
                             train={"decoder": 1e-3, "encoder": {"name": "sgd", "lr": 0.1, "momentum": 0.9}})])
    driver = pw.PlanDriver(pw.Parts(EncDec()), plan)
    opts = driver.build_optimizer()
    assert isinstance(opts, pw.OptimizerSet) and type(opts["encoder"]).__name__ == "SGD"
    driver.before_step(1)
    assert driver.optimizer is opts and opts["encoder"].param_groups[0]["momentum"] == 0.9
