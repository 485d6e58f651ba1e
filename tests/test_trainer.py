"""The trainer: plans drive freezing and optimizers; checkpoints resume bit-identically."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import partwise as pw
from core_helpers import snapshot
from partwise._run import _checkpoint


class UserModel(nn.Module):
    """A user's own model: no partwise base class, no magic attribute names."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 24), nn.BatchNorm1d(24), nn.ReLU(), nn.Dropout(0.2))
        self.head = nn.Sequential(nn.Linear(24, 24), nn.ReLU(), nn.Dropout(0.2), nn.Linear(24, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def user_loss(model: nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)


def dataset(n: int = 120) -> TensorDataset:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(n, 6, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return TensorDataset(x, y)


PLAN = pw.Plan([
    pw.Phase("head only", epochs=2, train={"head": 3e-2}, schedule=pw.LRSchedule(decay="linear")),
    pw.Phase("all", epochs=2, train={"head": 3e-2, "body": 1e-2},
             schedule=pw.LRSchedule(warmup=3, decay="cosine"), optimizer={"weight_decay": 0.05}),
])  # 120 items / batch 24 = 5 steps per epoch: phase 0 = steps 0-9, phase 1 = steps 10-19


def make(seed: int = 0, **kw) -> tuple[UserModel, pw.Parts, pw.Trainer]:
    torch.manual_seed(seed)
    model = UserModel()
    parts = pw.Parts(model)
    return model, parts, pw.Trainer(model, parts, PLAN, user_loss, batch_size=24, seed=11, **kw)


def test_user_model_trains_by_plan_and_frozen_body_stays_fixed_in_phase_0():
    model, parts, trainer = make()
    seen = {}

    class Record:
        def on_phase_start(self, tr, span):
            seen[span.phase.name] = {
                "groups": [(g["part"], g["warm"]) for g in tr.optimizer.param_groups if g["params"]],
                "frozen": parts.frozen_names,
                "body": snapshot(model.body),
                "head_state": {id(p): s for p, s in tr.optimizer.state.items()},
            }

    trainer.callbacks.append(Record())
    history = trainer.fit(dataset(), dataset(60))
    assert seen["head only"]["frozen"] == ["body"] and seen["all"]["frozen"] == []
    assert {p for p, _ in seen["head only"]["groups"]} == {"head"}
    # the body joins with its own warmup; the head continues without one
    assert {(p, w) for p, w in seen["all"]["groups"]} == {("head", False), ("body", True)}
    # body bit-identical through phase 0 (BatchNorm statistics included), although model.train() ran every step
    before, after = seen["head only"]["body"], seen["all"]["body"]
    assert all(torch.equal(before[k], after[k]) for k in before)
    # the head's Adam state carried across the transition, the body's started fresh
    assert seen["all"]["head_state"] and all(id(p) not in seen["all"]["head_state"] for p in model.body.parameters())
    assert [h["phase"] for h in history] == ["head only", "head only", "all", "all"]
    assert history[-1]["dev_loss"] < history[0]["dev_loss"]
    assert history[2]["lr/body"] == pytest.approx(1e-2 * pw.LRSchedule(warmup=3, decay="cosine").factor(4, 10))


def test_learning_rates_follow_schedule_for_groups_added_mid_run():
    model, parts, trainer = make()
    lrs = []
    trainer.callbacks.append(type("C", (), {"on_step_end": lambda self, tr, logs: lrs.append(dict(logs))})())
    trainer.fit(dataset())
    sched = PLAN.phases[1].schedule
    for i, logs in enumerate(lrs[10:]):
        assert logs["lr/body"] == pytest.approx(1e-2 * sched.factor(i, 10))
        assert logs["lr/head"] == pytest.approx(3e-2 * sched.factor(i, 10, warm=False))
    assert lrs[0]["lr/head"] == pytest.approx(3e-2) and "lr/body" not in lrs[0]


@pytest.mark.parametrize("stop_at", [3, 10, 11], ids=["mid-phase", "at-transition", "after-transition"])
def test_resume_is_bit_identical(tmp_path, stop_at):
    model_a, _, trainer_a = make()
    hist_a = trainer_a.fit(dataset(), dataset(60))

    run = tmp_path / "run"
    _, _, trainer_b = make(run_dir=run)
    trainer_b.fit(dataset(), dataset(60), max_steps=stop_at)
    assert _checkpoint.read_meta(_checkpoint.resolve_checkpoint(run))["step"] == stop_at

    model_c, parts_c, trainer_c = make(seed=123, run_dir=run)  # other init: everything must come from the checkpoint
    hist_c = trainer_c.fit(dataset(), dataset(60), resume=run)
    for (k, a), c in zip(model_a.state_dict().items(), model_c.state_dict().values(), strict=True):
        assert torch.equal(a, c), k
    assert [h["dev_loss"] for h in hist_a] == [h["dev_loss"] for h in hist_c]
    assert [h["train_loss"] for h in hist_a] == [h["train_loss"] for h in hist_c]


def test_resume_with_another_plan_is_refused(tmp_path):
    _, _, trainer = make(run_dir=tmp_path)
    trainer.fit(dataset(), max_steps=12)
    torch.manual_seed(0)
    model = UserModel()
    parts = pw.Parts(model)
    short = pw.Plan([pw.Phase("all", epochs=4, train={"head": 1e-2, "body": 1e-2})])
    other = pw.Trainer(model, parts, short, user_loss, batch_size=24)
    with pytest.raises(pw.ConfigError, match="plan the run was started with"):
        other.fit(dataset(), resume=tmp_path)


def nan_at(step_to_fail: int):
    calls = {"n": 0}

    def loss(model, batch):
        calls["n"] += 1
        value = user_loss(model, batch)
        return value * float("nan") if calls["n"] == step_to_fail + 1 else value

    return loss


def test_nan_loss_skipped_step_is_counted_and_weights_stay_finite():
    torch.manual_seed(0)
    model = UserModel()
    trainer = pw.Trainer(model, pw.Parts(model), PLAN, nan_at(4), batch_size=24)
    with pytest.warns(RuntimeWarning, match="skipped step 4: loss is nan"):
        trainer.fit(dataset())
    assert trainer.skipped_steps == 1 and trainer.step == 20
    assert all(torch.isfinite(t).all() for t in model.state_dict().values())


def test_nan_loss_stops_and_never_reaches_a_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = UserModel()
    trainer = pw.Trainer(model, pw.Parts(model), PLAN, nan_at(4), batch_size=24, run_dir=tmp_path,
                         on_nonfinite="stop", save_every=1)
    with pytest.raises(pw.NonFiniteLoss, match="at step 4"):
        trainer.fit(dataset())
    latest = _checkpoint.resolve_checkpoint(tmp_path)
    assert _checkpoint.read_meta(latest)["step"] == 4
    fresh = UserModel()
    _checkpoint.load_weights(fresh, pw.Parts(fresh), latest)
    assert all(torch.isfinite(t).all() for t in fresh.state_dict().values())


def test_checkpoint_has_one_safetensors_file_per_part_and_safe_state(tmp_path):
    model, parts, trainer = make(run_dir=tmp_path)
    trainer.fit(dataset(), max_steps=2)
    ckpt = _checkpoint.resolve_checkpoint(tmp_path)
    assert sorted(p.name for p in ckpt.iterdir()) == [
        "meta.json", "part-body.safetensors", "part-head.safetensors", "state.pt"]
    state = torch.load(ckpt / "state.pt", weights_only=True)  # no arbitrary unpickling needed
    assert state["step"] == 2 and state["parts"]["frozen"] == {"body": {"dropout": "eval", "norm": "eval"}}
    other = UserModel()
    assert pw.load_weights(other, pw.Parts(other), tmp_path, only=["body"]) == ["body"]
    assert all(torch.equal(a, b)
               for a, b in zip(other.body.state_dict().values(), model.body.state_dict().values(), strict=True))


def test_killed_write_leaves_last_complete_checkpoint(tmp_path, monkeypatch):
    model, parts, trainer = make(run_dir=tmp_path)
    trainer.fit(dataset(), max_steps=2)
    good = copy.deepcopy(model.state_dict())
    calls = {"n": 0}
    real = _checkpoint.save_file

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed mid-write")
        return real(*args, **kwargs)

    monkeypatch.setattr(_checkpoint, "save_file", dying)
    model2, parts2, trainer2 = make(run_dir=tmp_path)
    with pytest.raises(KeyboardInterrupt):
        trainer2.fit(dataset(), resume=tmp_path, max_steps=4)
    ckpt = _checkpoint.resolve_checkpoint(tmp_path)
    assert _checkpoint.read_meta(ckpt)["step"] == 2
    fresh = UserModel()
    _checkpoint.load_weights(fresh, pw.Parts(fresh), tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), good.values(), strict=True))


def test_loading_into_a_different_model_lists_mismatches(tmp_path):
    _, _, trainer = make(run_dir=tmp_path)
    trainer.fit(dataset(), max_steps=1)
    other = nn.Module()
    other.body = nn.Sequential(nn.Linear(6, 12))
    other.head = nn.Linear(12, 3)
    with pytest.raises(pw.CheckpointError, match=r"body.0.weight: checkpoint shape \(24, 6\) vs model \(12, 6\)") as e:
        pw.load_weights(other, pw.Parts(other), tmp_path)
    assert "head.weight (part 'head') is missing from the checkpoint" in e.value.problems
    assert "head.0.weight is in the checkpoint but not in the model" in e.value.problems
    assert other.body[0].weight.shape == (12, 6)


def test_grad_accumulation_matches_bigger_batch_without_dropout():
    def run(batch_size: int, accum: int) -> nn.Module:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
        parts = pw.Parts(model, {"all": ["0", "2"]})
        plan = pw.Plan([pw.Phase("sgd", epochs=2, train={"all": 0.1}, optimizer={"name": "sgd"})])
        trainer = pw.Trainer(model, parts, plan, user_loss, batch_size=batch_size, grad_accum=accum, seed=1)
        trainer.fit(dataset())
        return model

    a, b = run(24, 1), run(12, 2)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)


def test_bad_trainer_options_reported_together():
    model = UserModel()
    with pytest.raises(pw.ConfigError) as e:
        pw.Trainer(model, pw.Parts(model), PLAN, user_loss, precision="fp8", on_nonfinite="ignore", grad_accum=0)
    assert len(e.value.errors) == 3


def test_guard_catches_a_write_to_a_frozen_part_at_the_phase_end():
    model, parts, trainer = make(guard=True)

    class Sabotage:
        def on_step_end(self, tr, logs):
            if logs["step"] == 3:
                with torch.no_grad():
                    model.body[0].weight[0, 0] += 1.0  # the body is frozen in phase 0

    trainer.callbacks.append(Sabotage())
    with pytest.raises(pw.FrozenPartChanged, match=r"body.0.weight \(part 'body'\)"):
        trainer.fit(dataset())
    assert trainer.step == 10  # raised at the transition, before phase 1 could train the body


def test_time_limit_stops_with_an_evaluated_resumable_checkpoint(tmp_path):
    _, _, trainer = make(run_dir=tmp_path)
    history = trainer.fit(dataset(), dataset(60), max_minutes=1e-6)
    assert trainer.step == 1 and len(history) == 1 and "dev_loss" in history[0]
    assert _checkpoint.read_meta(_checkpoint.resolve_checkpoint(tmp_path))["step"] == 1
    _, _, resumed = make(run_dir=tmp_path)
    resumed.fit(dataset(), dataset(60), resume=tmp_path)
    assert resumed.step == 20
