"""The trainer at the edges users reach: NaN gradients, fp16 overflows, their own DataLoader, a plain
list as data, resume under another plan, and every mistake that is knowable before the first step."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, get_worker_info

import partwise as pw
from partwise._train import _distributed
from partwise._train._loader import make_loader
from test_trainer import PLAN, UserModel, dataset, make, user_loss


class LogSteps:
    def __init__(self) -> None:
        self.logs: list[dict] = []

    def on_step_end(self, trainer, logs) -> None:
        self.logs.append(dict(logs))


def poison_grad_at(model: nn.Module, step: int, value: float) -> None:
    """Give ``model.head[0].weight`` a ``value`` (NaN or inf) gradient during optimizer step ``step``
    (one micro-batch per step): the loss itself stays finite."""
    calls = {"n": 0}

    def hook(grad: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        return torch.full_like(grad, value) if calls["n"] == step + 1 else grad

    model.head[0].weight.register_hook(hook)


# -- 1. non-finite gradients -------------------------------------------------------------------
def test_nan_gradient_under_a_finite_loss_without_clipping_is_skipped():
    model, _, trainer = make()
    poison_grad_at(model, 4, math.nan)
    log = LogSteps()
    trainer.callbacks.append(log)
    with pytest.warns(RuntimeWarning, match="skipped step 4: gradient norm is nan"):
        trainer.fit(dataset())
    assert trainer.skipped_steps == 1 and trainer.step == 20
    assert all(torch.isfinite(t).all() for t in model.state_dict().values())
    norms = [row["grad_norm"] for row in log.logs]
    assert math.isnan(norms[4])
    assert all(isinstance(n, float) and n > 0 for i, n in enumerate(norms) if i != 4)  # real norms, never 0.0


def test_nan_gradient_stops_when_asked():
    model, _, trainer = make(on_nonfinite="stop")
    poison_grad_at(model, 2, math.inf)
    with pytest.raises(pw.NonFiniteLoss, match="gradient norm is inf at step 2"):
        trainer.fit(dataset())
    assert all(torch.isfinite(t).all() for t in model.state_dict().values())


def norms(steps: int = 6, **kw) -> list[float]:
    """The gradient norms a run logs step by step."""
    _, _, trainer = make(**kw)
    log = LogSteps()
    trainer.callbacks.append(log)
    trainer.fit(dataset(), max_steps=steps)
    return [row["grad_norm"] for row in log.logs]


def test_logged_gradient_norm_is_the_real_norm_with_or_without_clipping():
    plain, clipped_loosely = norms(), norms(grad_clip=1e6)
    assert plain == pytest.approx(clipped_loosely) and all(n > 0 for n in plain)
    per_part = norms(grad_clip={"head": 1e6})
    assert per_part == pytest.approx(plain)


# -- 1b. fp16 loss scaling (simulated on CPU; the real thing on CUDA) --------------------------------
def overflow_run(trainer: pw.Trainer, model: nn.Module, overflow_step: int) -> dict[int, dict]:
    """Fit, recording the scale and the head's weight after every step."""
    seen: dict[int, dict] = {}

    class Record:
        def on_step_end(self, tr, logs):
            seen[logs["step"]] = {"scale": tr.scaler.get_scale(), "w": model.head[0].weight.detach().clone()}

    poison_grad_at(model, overflow_step, math.inf)
    trainer.callbacks.append(Record())
    trainer.fit(dataset(), max_steps=8)
    return seen


def test_fp16_overflow_with_clipping_uses_the_scalers_skip_and_back_off_cpu_simulation():
    model, _, trainer = make(grad_clip=1.0)
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)  # what precision="fp16" sets up on CUDA
    seen = overflow_run(trainer, model, overflow_step=3)  # used to raise "unscale_() has already been called"
    assert trainer.step == 8 and trainer.skipped_steps == 1
    assert seen[4]["scale"] == seen[3]["scale"] / 2  # backed off after the overflow
    assert torch.equal(seen[4]["w"], seen[3]["w"])  # the overflowing step was not applied
    assert not torch.equal(seen[5]["w"], seen[4]["w"])  # and training went on
    assert all(torch.isfinite(t).all() for t in model.state_dict().values())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fp16_overflow_with_clipping_on_cuda():
    torch.manual_seed(0)
    model = UserModel()
    trainer = pw.Trainer(model, pw.Parts(model), PLAN, user_loss, batch_size=24, seed=11, device="cuda",
                         precision="fp16", grad_clip=1.0)
    seen = overflow_run(trainer, model, overflow_step=3)
    assert trainer.step == 8 and trainer.skipped_steps >= 1
    assert seen[4]["scale"] < seen[3]["scale"] and torch.equal(seen[4]["w"], seen[3]["w"])
    assert all(torch.isfinite(t).all() for t in model.state_dict().values())


# -- 3. the user's DataLoader and plain lists ------------------------------------------------------
def _init_worker(worker_id: int) -> None:
    torch.manual_seed(1000 + worker_id)


class WorkersOnly(Dataset):
    """A dataset that refuses to be read in the main process: proves the loader's workers ran."""

    def __init__(self) -> None:
        self.data = dataset()

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        if get_worker_info() is None:
            raise RuntimeError("read in the main process: num_workers was dropped")
        return self.data[i]


def test_a_users_dataloader_keeps_its_settings():
    g = torch.Generator().manual_seed(7)
    user = DataLoader(dataset(), batch_size=24, shuffle=True, num_workers=2, pin_memory=True,
                      persistent_workers=True, worker_init_fn=_init_worker, generator=g, prefetch_factor=3,
                      timeout=60, multiprocessing_context="fork")
    loader = make_loader(user, batch_size=99, seed=0)
    for key in ("num_workers", "pin_memory", "persistent_workers", "worker_init_fn", "prefetch_factor", "timeout",
                "generator"):
        assert getattr(loader, key) == getattr(user, key), key
    assert loader.multiprocessing_context is user.multiprocessing_context
    assert len(loader) == len(user)


@pytest.mark.slow
def test_exact_resume_with_two_workers_and_shuffle(tmp_path):
    def loader() -> DataLoader:
        return DataLoader(WorkersOnly(), batch_size=24, shuffle=True, num_workers=2)

    model_a, _, trainer_a = make()
    trainer_a.fit(loader())
    run = tmp_path / "run"
    _, _, trainer_b = make(run_dir=run)
    trainer_b.fit(loader(), max_steps=7)
    model_c, _, trainer_c = make(seed=123, run_dir=run)
    trainer_c.fit(loader(), resume=run)
    for (k, a), c in zip(model_a.state_dict().items(), model_c.state_dict().values(), strict=True):
        assert torch.equal(a, c), k


def test_a_plain_list_is_training_and_validation_data():
    data = [(x, y) for x, y in dataset()]
    _, _, trainer = make()
    history = trainer.fit(data, data[:48])
    assert trainer.step == 20 and "dev_loss" in history[-1]


def test_data_a_dataloader_cannot_take_is_refused_before_training():
    _, _, trainer = make()
    with pytest.raises(pw.ConfigError, match="train_data: int is neither a map-style dataset"):
        trainer.fit(3)
    assert trainer.step == 0


# -- 4. resume checks the plan ---------------------------------------------------------------------
def test_resume_under_a_one_phase_plan_is_refused_naming_the_difference(tmp_path):
    _, _, trainer = make(run_dir=tmp_path)
    trainer.fit(dataset(), max_steps=4)  # phase 0 of PLAN; a one-phase plan also puts step 4 in phase 0
    model = UserModel()
    one = pw.Plan([pw.Phase("head only", epochs=4, train={"head": 3e-2})])
    other = pw.Trainer(model, pw.Parts(model), one, user_loss, batch_size=24, run_dir=tmp_path)
    with pytest.raises(pw.ConfigError) as e:
        other.fit(dataset(), resume=tmp_path)
    message = str(e.value)
    assert "number of phases: checkpoint 2, now 1" in message and "epochs: checkpoint 2, now 4" in message
    assert "allow_plan_change=True" in message and other.step == 0


def longer_plan() -> pw.Plan:
    last = PLAN.phases[1]
    return pw.Plan([PLAN.phases[0], pw.Phase(last.name, epochs=3, train=last.train, schedule=last.schedule,
                                             optimizer=last.optimizer)])


def test_extending_the_last_phase_needs_the_opt_in_and_is_recorded(tmp_path):
    _, _, trainer = make(run_dir=tmp_path)
    trainer.fit(dataset())  # the whole plan: 20 steps
    torch.manual_seed(0)
    model = UserModel()
    longer = pw.Trainer(model, pw.Parts(model), longer_plan(), user_loss, batch_size=24, seed=11, run_dir=tmp_path)
    with pytest.raises(pw.ConfigError, match=r"phase 1 \('all'\).epochs: checkpoint 2, now 3"):
        longer.fit(dataset(), resume=tmp_path)
    changes = []
    longer.callbacks.append(type("C", (), {"on_plan_change": lambda self, tr, c: changes.extend(c)})())
    with pytest.warns(RuntimeWarning, match="resuming under a changed plan"):
        longer.fit(dataset(), resume=tmp_path, allow_plan_change=True)
    assert longer.step == 25
    assert changes == ["step 20: phase 1 ('all').epochs: checkpoint 2, now 3"] == longer.plan_changes
    state = torch.load(pw.resolve_checkpoint(tmp_path) / "state.pt", weights_only=True)
    assert state["plan"]["plan_changes"] == changes  # kept with the run


# -- 6. everything knowable before the first step --------------------------------------------------
def test_trainer_arguments_are_all_checked_at_once():
    model = UserModel()
    parts = pw.Parts(model)
    with pytest.raises(pw.ConfigError) as e:
        pw.Trainer(model, parts, PLAN, user_loss, grad_accum=2.5, batch_size=0, grad_clip={"encoder": 1.0},
                   device="banana", save_every=-1, best_metric=("loss", "down"))
    errors = e.value.errors
    assert len(errors) == 6, errors
    text = " ".join(errors)
    for needle in ("grad_accum: 2.5", "batch_size: 0", "grad_clip.encoder: unknown part 'encoder'", "device: 'banana'",
                   "save_every: -1", "best_metric: ('loss', 'down')"):
        assert needle in text, needle


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_without_cuda_is_a_config_error():
    model = UserModel()
    with pytest.raises(pw.ConfigError, match="device: 'cuda' is not available on this machine"):
        pw.Trainer(model, pw.Parts(model), PLAN, user_loss, device="cuda")


def test_a_part_name_that_cannot_name_a_file_is_refused_before_training(tmp_path):
    model = UserModel()
    parts = pw.Parts(model, {"body/encoder": "body", "head": "head"})
    plan = pw.Plan([pw.Phase("all", epochs=1, train={"head": 1e-2})])
    with pytest.raises(pw.ConfigError, match=r"part name 'body/encoder' cannot name a checkpoint file.*'body_encoder'"):
        pw.Trainer(model, parts, plan, user_loss, run_dir=tmp_path)
    pw.Trainer(model, parts, plan, user_loss)  # no checkpoints, no file names: fine


def test_a_metric_the_task_does_not_produce_is_refused_before_the_first_step():
    for kw, val in (({"best_metric": ("wer", "min")}, dataset(60)),
                    ({"early_stopping": pw.EarlyStopping("loss")}, None)):
        _, _, trainer = make(**kw)
        log = LogSteps()
        trainer.callbacks.append(log)
        with pytest.raises(pw.ConfigError, match="will not be produced"):
            trainer.fit(dataset(), val)
        assert trainer.step == 0 and not log.logs
    _, _, trainer = make(best_metric=("train_loss", "min"))
    trainer.fit(dataset(), max_steps=5)  # train_loss needs no validation data


def test_early_stopping_and_best_metric_follow_their_own_metrics(tmp_path):
    _, _, trainer = make(run_dir=tmp_path, best_metric=("loss", "min"),
                         early_stopping=pw.EarlyStopping("loss", "max", 1))
    history = trainer.fit(dataset(), dataset(60))
    # val loss falls: the best checkpoint moves on, but in "max" mode it never improves after epoch 1
    assert len(history) == 2 and history[1]["dev_loss"] < history[0]["dev_loss"]
    assert pw.resolve_checkpoint(tmp_path, "best").name == "step-00000010"


# -- 7/8. errors are partwise errors; the loss is read once per optimizer step -----------------------
def test_every_user_error_is_a_partwise_error():
    for cls in (pw.ConfigError, pw.PartError, pw.CheckpointError, pw.CheckpointNotFound, pw.CacheRefused,
                pw.FrozenPartChanged, pw.NonFiniteLoss):
        assert issubclass(cls, pw.PartwiseError), cls
    assert issubclass(pw.CheckpointNotFound, FileNotFoundError) and issubclass(pw.ConfigError, ValueError)


def test_cli_prints_one_line_and_exits_2_for_any_partwise_error(monkeypatch, capsys):
    from partwise.cli import _commands, main

    def refuse(*args, **kwargs):
        raise pw.CacheRefused("the encoder is not deterministic:\n two passes differ")

    monkeypatch.setattr(_commands, "evaluate", refuse)
    assert main(["eval", "runs/x"]) == 2
    err = capsys.readouterr().err
    assert err == "partwise: error: the encoder is not deterministic: two passes differ\n"


def test_the_loss_is_read_to_the_host_once_per_optimizer_step(monkeypatch):
    reads = []
    real = _distributed.loss_and_norm

    def counted(loss, norm, world):
        reads.append(loss.requires_grad)
        return real(loss, norm, world)

    monkeypatch.setattr(_distributed, "loss_and_norm", counted)
    torch.manual_seed(0)
    model = UserModel()
    trainer = pw.Trainer(model, pw.Parts(model), PLAN, user_loss, batch_size=8, grad_accum=3, seed=1)
    trainer.fit(dataset())
    assert trainer.step == 20 and len(reads) == 20 and not any(reads)


def test_stop_reason_says_why_fit_ended(tmp_path):
    _, _, trainer = make(best_metric=("loss", "min"), early_stopping=pw.EarlyStopping("loss", "max", 1))
    trainer.fit(dataset(), dataset(60))
    assert trainer.stop_reason == "early stopping: loss did not improve in 1 evaluations" and trainer.step == 10
    _, _, trainer = make()
    trainer.fit(dataset(), max_steps=3)
    assert trainer.stop_reason == "max_steps reached"
    trainer.fit(dataset())
    assert trainer.stop_reason == "the plan's end" and trainer.step == 20


def test_grad_clip_zero_means_no_clipping_and_a_part_at_zero_is_refused():
    """One rule, owned by the Trainer and used by the recipe checks: 0 (or None) turns clipping off."""
    assert norms(4, grad_clip=0) == pytest.approx(norms(4, grad_clip=None))
    with pytest.raises(pw.ConfigError, match=r"grad_clip.head: 0 must be a number > 0"):
        make(grad_clip={"head": 0})
