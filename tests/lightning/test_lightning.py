"""A partwise plan inside the real PyTorch Lightning Trainer: frozen means frozen through validation,
the unfrozen part trains at its own LR and warmup, exact resume from Lightning checkpoints, DDP,
separate optimizers under manual optimization, and what is refused before ``fit``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

pytest.importorskip("lightning")

import lightning.pytorch as L  # noqa: E402
from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402
from lightning_helpers import EncDec, Module, loader, plan, trainer  # noqa: E402

import partwise as pw  # noqa: E402
from partwise import lightning as pw_l  # noqa: E402
from processes import launch, run_bounded  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")


def encoder_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.encoder.state_dict().items()}


class AtPhaseEnd(L.Callback):
    """Records, at the last batch of phase 0, the encoder's tensors and the optimizer state bytes."""

    def __init__(self, plan_cb: pw_l.PartwisePlan, last_step: int):
        self.plan_cb, self.last_step = plan_cb, last_step
        self.encoder: dict[str, torch.Tensor] = {}
        self.state_bytes: dict[str, int] = {}

    def on_train_batch_end(self, trainer: L.Trainer, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step == self.last_step:
            self.encoder = encoder_state(module.model)
            self.state_bytes = pw.state_bytes(self.plan_cb.driver.optimizer, self.plan_cb.parts)


def test_frozen_phase_keeps_the_encoder_bit_identical_in_eval_then_it_trains_at_its_own_lr_and_warmup():
    torch.manual_seed(0)
    model = EncDec()
    parts = pw.Parts(model)
    cb = pw_l.PartwisePlan(parts, plan(frozen_epochs=2, epochs=2, warmup=3), guard=True)
    probe = AtPhaseEnd(cb, last_step=8)
    module = Module(model)
    before = encoder_state(model)
    trainer([cb, probe], max_epochs=4).fit(module, loader(), loader(32))  # 4 steps per epoch, validation each epoch
    assert all(torch.equal(before[k], probe.encoder[k]) for k in before), "frozen encoder moved (or its BN stats)"
    assert probe.state_bytes["encoder"] == 0 and probe.state_bytes["decoder"] > 0
    assert module.modes[:8] == [(False, False)] * 8, "frozen BatchNorm/Dropout ran in train mode"
    assert module.modes[8:] == [(True, True)] * 8  # unfrozen: they follow Lightning's model.train()
    assert not torch.equal(before["0.weight"], model.encoder[0].weight)  # the encoder trained in phase 1
    assert [round(r["encoder"] / 1e-3, 4) for r in module.lrs[8:12]] == [0.3333, 0.6667, 1.0, 1.0]  # own warmup
    assert {r["decoder"] for r in module.lrs} == {1e-2}  # the decoder carries on, no warmup


def test_guard_fails_the_fit_when_something_writes_to_a_frozen_part():
    torch.manual_seed(0)
    model = EncDec()

    class Vandal(L.Callback):
        def on_train_batch_end(self, trainer: L.Trainer, module: Any, *args: Any) -> None:
            if trainer.global_step == 2:
                with torch.no_grad():
                    model.encoder[0].weight.add_(1.0)

    cb = pw_l.PartwisePlan(pw.Parts(model), plan(frozen_epochs=1, epochs=1), guard=True)
    with pytest.raises(pw.FrozenPartChanged, match=r"encoder.0.weight"):
        trainer([cb, Vandal()], max_epochs=2).fit(Module(model), loader())


class Reseed(L.Callback):
    """Lightning's checkpoints hold no RNG state; reseeding per step makes the unfrozen encoder's
    dropout draw the same numbers in an interrupted run as in an uninterrupted one."""

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        torch.manual_seed(1000 + trainer.global_step)


def fit_run(tmp: Path | None = None, resume: str | None = None, **plan_kwargs: Any) -> nn.Module:
    torch.manual_seed(0)
    model = EncDec()
    callbacks: list[Any] = [pw_l.PartwisePlan(pw.Parts(model), plan(**plan_kwargs)), Reseed()]
    if tmp is not None:
        callbacks.append(ModelCheckpoint(dirpath=tmp, every_n_epochs=1, save_top_k=-1))
    trainer(callbacks, max_epochs=4, enable_checkpointing=tmp is not None).fit(
        Module(model), loader(), loader(32), ckpt_path=resume)
    return model


RESUME = """
import sys, warnings, torch
warnings.filterwarnings("ignore")
sys.path.insert(0, {helpers!r}); sys.path.insert(0, {tests!r})
from test_lightning import fit_run
model = fit_run(resume={ckpt!r})
torch.save(model.state_dict(), {out!r})
"""


@pytest.mark.slow
def test_resume_from_a_lightning_checkpoint_in_a_new_process_ends_bit_identical(tmp_path):
    full = fit_run(tmp_path / "ckpts")
    # epoch 1 ends inside the frozen phase; epoch 2's end is the phase boundary (the encoder joins at step 8)
    for name in ("epoch=0-step=4.ckpt", "epoch=1-step=8.ckpt", "epoch=2-step=12.ckpt"):
        out = tmp_path / f"{name}.pt"
        code = RESUME.format(helpers=str(Path(__file__).parents[1]), tests=str(Path(__file__).parent),
                             ckpt=str(tmp_path / "ckpts" / name), out=str(out))
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert proc.returncode == 0, proc.stderr[-3000:]
        resumed = torch.load(out)
        diff = [k for k, v in full.state_dict().items() if not torch.equal(v, resumed[k])]
        assert not diff, f"resumed from {name}: {diff} differ from the uninterrupted run"


def test_resume_under_another_plan_is_refused_unless_allowed(tmp_path):
    fit_run(tmp_path, frozen_epochs=2, epochs=2)
    ckpt = str(tmp_path / "epoch=1-step=8.ckpt")
    torch.manual_seed(0)
    model = EncDec()
    cb = pw_l.PartwisePlan(pw.Parts(model), plan(frozen_epochs=2, epochs=3))
    with pytest.raises(pw.ConfigError, match=r"phase 1 \('all'\).epochs: checkpoint 2, now 3"):
        trainer([cb], max_epochs=5).fit(Module(model), loader(), ckpt_path=ckpt)
    model = EncDec()
    cb = pw_l.PartwisePlan(pw.Parts(model), plan(frozen_epochs=2, epochs=3), allow_plan_change=True)
    with pytest.warns(RuntimeWarning, match="resuming under a changed plan"):
        trainer([cb], max_epochs=5).fit(Module(model), loader(), ckpt_path=ckpt)
    assert cb.driver.plan_changes == ["phase 1 ('all').epochs: checkpoint 2, now 3"]


def test_gradient_accumulation_counts_optimizer_steps():
    """4 batches per epoch, 2 per step: 2 steps per epoch, so the encoder joins at batch 8 (step 4)."""
    torch.manual_seed(0)
    model = EncDec()
    cb = pw_l.PartwisePlan(pw.Parts(model), plan(frozen_epochs=2, epochs=1, warmup=0))
    module = Module(model)
    trainer([cb], max_epochs=3, accumulate_grad_batches=2).fit(module, loader())
    assert module.modes == [(False, False)] * 8 + [(True, True)] * 4
    assert cb.driver.span is not None and cb.driver.span.start == 4


def test_separate_optimizers_per_part_under_manual_optimization():
    torch.manual_seed(0)
    model = EncDec()
    parts = pw.Parts(model)
    cb = pw_l.PartwisePlan(parts, plan(frozen_epochs=1, epochs=1, warmup=0, separate=True), guard=True)
    module = Module(model, manual=True)
    before = encoder_state(model)
    lightning = trainer([cb], max_epochs=2)
    lightning.fit(module, loader())
    opts = cb.driver.optimizer
    assert isinstance(opts, pw.OptimizerSet) and type(opts["encoder"]).__name__ == "SGD"
    assert [type(o).__name__ for o in lightning.optimizers] == ["SGD", "AdamW"]  # encoder, decoder (part order)
    assert module.modes == [(False, False)] * 4 + [(True, True)] * 4  # 4 batches = 4 plan steps per epoch
    assert not torch.equal(before["0.weight"], model.encoder[0].weight)
    assert opts["encoder"].state  # SGD momentum buffers of the part that joined


def test_separate_optimizers_under_automatic_optimization_are_refused():
    model = EncDec()
    cb = pw_l.PartwisePlan(pw.Parts(model), plan(separate=True))
    with pytest.raises(pw.ConfigError, match="automatic_optimization = False"):
        trainer([cb], max_epochs=1).fit(Module(model), loader())


def test_an_optimizer_built_elsewhere_is_refused():
    model = EncDec()

    class Own(Module):
        def configure_optimizers(self) -> Any:
            return torch.optim.AdamW([p for p in self.parameters() if p.requires_grad])

    cb = pw_l.PartwisePlan(pw.Parts(model), plan())
    with pytest.raises(pw.ConfigError, match="plan_of\\(self\\).configure_optimizers"):
        trainer([cb], max_epochs=1).fit(Own(model), loader())


def test_an_lr_scheduler_fighting_the_plan_is_an_error_not_a_silent_override():
    model = EncDec()

    class WithScheduler(Module):
        def configure_optimizers(self) -> Any:
            opt = pw_l.plan_of(self).configure_optimizers()
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    cb = pw_l.PartwisePlan(pw.Parts(model), plan())
    with pytest.raises(pw.ConfigError, match="changed outside the plan"):
        trainer([cb], max_epochs=1).fit(WithScheduler(model), loader())


def test_a_plan_that_half_freezes_a_tied_tensor_or_switches_optimizer_class_is_refused_before_fit():
    tied = nn.Module()
    tied.encoder = nn.Embedding(5, 4)
    tied.decoder = nn.Linear(4, 5)
    tied.decoder.weight = tied.encoder.weight
    parts = pw.Parts(tied)
    with pytest.raises(pw.ConfigError, match="same Parameter"):
        pw_l.PartwisePlan(parts, pw.Plan([pw.Phase("dec", epochs=1, train={"decoder": 1e-3})]))
    switch = pw.Plan([pw.Phase("a", epochs=1, train={"decoder": 1e-3}),
                      pw.Phase("b", epochs=1, train={"decoder": {"name": "sgd", "lr": 0.1}})])
    with pytest.raises(pw.ConfigError, match=r"part 'decoder' trains with AdamW in phase 0, SGD in phase 1"):
        pw_l.PartwisePlan(pw.Parts(EncDec()), switch)


def test_a_lightning_run_shorter_than_the_plan_warms():
    model = EncDec()
    cb = pw_l.PartwisePlan(pw.Parts(model), plan(frozen_epochs=2, epochs=2))
    with pytest.warns(RuntimeWarning, match="it stops in phase 'decoder only'"):
        trainer([cb], max_epochs=1).fit(Module(model), loader())


@pytest.mark.slow
def test_ddp_two_ranks_stay_identical_through_a_mid_run_unfreeze(tmp_path):
    script = Path(__file__).parents[1] / "scripts" / "lightning_ddp.py"
    proc = run_bounded([*launch(2), str(script), str(tmp_path)], timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    for k in r0["final"]:
        assert torch.equal(r0["final"][k], r1["final"][k]), f"ranks differ in {k}"
    frozen_end, start = r0["frozen_end"], r0["start"]
    assert all(torch.equal(start[k], frozen_end[k]) for k in start if k.startswith("encoder.")), "frozen encoder moved"
    assert not torch.equal(start["encoder.0.weight"], r0["final"]["encoder.0.weight"]), "unfrozen encoder never trained"
    assert r0["wrapped"] == [["decoder"], ["encoder", "decoder"]]  # the DDP wrapper was rebuilt for the new set

