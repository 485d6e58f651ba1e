"""Frozen means frozen: no parameter or buffer moves, whatever the optimizer and however
often ``model.train()`` is called; gradients still flow through frozen modules."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import partwise as pw
from core_helpers import EncDec, snapshot, train_steps

OPTIMIZERS = {
    "sgd_momentum": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 0.01},
    "adam": {"name": "adam", "lr": 0.01},
    "adamw_wd": {"name": "adamw", "lr": 0.01, "weight_decay": 0.1},
    "rmsprop": {"name": "rmsprop", "lr": 0.01, "momentum": 0.5},
}


@pytest.mark.parametrize("when", ["before", "after_steps"])
@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
def test_frozen_part_is_bit_identical_and_trainable_part_moves(encdec, opt_name, when):
    parts = pw.Parts(encdec)
    if when == "before":
        parts.freeze("encoder")
    opt = pw.build_optimizer(parts, default=OPTIMIZERS[opt_name])
    if when == "after_steps":
        train_steps(encdec, opt, 3, seed=7)  # optimizer state (momentum, Adam moments) now exists
        assert any(len(opt.state[p]) for p in encdec.encoder.parameters())
        parts.freeze("encoder")
    before_enc, before_dec = snapshot(encdec.encoder), snapshot(encdec.decoder)
    train_steps(encdec, opt, 5, zero_grads_everywhere=True)
    after_enc, after_dec = snapshot(encdec.encoder), snapshot(encdec.decoder)
    for k in before_enc:
        assert torch.equal(before_enc[k], after_enc[k]), f"frozen {k} moved"
    moved = [k for k in before_dec if k != "b:1.num_batches_tracked" and not torch.equal(before_dec[k], after_dec[k])]
    assert sorted(moved) == sorted(k for k in before_dec if k != "b:1.num_batches_tracked")
    assert pw.state_bytes(opt, parts)["encoder"] == 0


def test_plain_pytorch_freezing_fails_where_partwise_holds(encdec):
    """The motivating failure: requires_grad=False alone lets AdamW and BatchNorm move a frozen encoder."""
    opt = torch.optim.AdamW(encdec.parameters(), lr=0.01, weight_decay=0.1)
    train_steps(encdec, opt, 3)
    for p in encdec.encoder.parameters():
        p.requires_grad_(False)
    before = snapshot(encdec.encoder)
    train_steps(encdec, opt, 2, zero_grads_everywhere=True)
    after = snapshot(encdec.encoder)
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("p:"))
    assert not torch.equal(before["b:1.running_mean"], after["b:1.running_mean"])


def test_frozen_norm_and_dropout_stay_eval_after_model_train(encdec):
    parts = pw.Parts(encdec)
    parts.freeze("encoder")
    encdec.train()
    encdec(torch.randn(4, 6))
    assert not encdec.encoder[1].training and not encdec.encoder[3].training
    assert encdec.decoder[1].training and encdec.decoder[3].training
    # deterministic: dropout of the frozen encoder is off even in train mode
    x = torch.randn(4, 6)
    assert torch.equal(encdec.encoder(x), encdec.encoder(x))
    parts.unfreeze("encoder")
    assert encdec.encoder[1].training  # back to the model's mode
    encdec.eval()
    encdec.train()
    assert encdec.encoder[3].training


def test_norm_train_keeps_statistics_updating_and_dropout_train_follows_model(encdec):
    parts = pw.Parts(encdec)
    parts.freeze("encoder", norm="train", dropout="train")
    before = encdec.encoder[1].running_mean.clone()
    encdec.train()
    encdec(torch.randn(8, 6))
    assert not torch.equal(before, encdec.encoder[1].running_mean)
    assert encdec.encoder[3].training
    with parts.guard():  # statistics of norm="train" layers are meant to move: not a violation
        encdec(torch.randn(8, 6))
    with pytest.raises(ValueError, match="norm='off'"):
        parts.freeze("decoder", norm="off")  # type: ignore[arg-type]


def test_rnn_dropout_of_frozen_part_is_off():
    torch.manual_seed(0)
    model = nn.Module()
    model.encoder = nn.GRU(4, 8, num_layers=2, dropout=0.5, batch_first=True)
    model.decoder = nn.Linear(8, 2)
    parts = pw.Parts(model)
    parts.freeze("encoder")
    model.train()
    x = torch.randn(2, 5, 4)
    assert torch.equal(model.encoder(x)[0], model.encoder(x)[0])


class Generator(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 6))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


def test_generator_learns_through_frozen_encoder_used_twice():
    """input -> E -> X -> G -> Y -> E -> Z, loss(Z, X): G learns, E stays bit-identical."""
    torch.manual_seed(0)
    model = nn.Module()
    model.encoder = EncDec().encoder
    model.generator = Generator()
    parts = pw.Parts(model)
    parts.freeze("encoder")
    opt = pw.build_optimizer(parts, default={"name": "adamw", "lr": 1e-2, "weight_decay": 0.1})
    before = snapshot(model.encoder)
    gen_before = snapshot(model.generator)
    data = torch.randn(64, 6)
    losses = []
    with parts.guard():
        for _ in range(30):
            parts.train()
            x = model.encoder(data)
            z = model.encoder(model.generator(x))
            loss = nn.functional.mse_loss(z, x)
            opt.zero_grad()
            loss.backward()
            report = pw.grad_report(parts)
            assert report.received("generator") and report.norm("generator") > 0
            assert not report.received("encoder")
            opt.step()
            losses.append(loss.item())
    after = snapshot(model.encoder)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(not torch.equal(gen_before[k], v) for k, v in snapshot(model.generator).items())
    assert losses[-1] < 0.5 * losses[0]
    assert "none" in str(report) and "generator" in str(report)


def test_guard_names_the_tensor_that_changed(encdec):
    parts = pw.Parts(encdec)
    parts.freeze("encoder")
    with pytest.raises(pw.FrozenPartChanged, match="encoder.4.weight") as e:
        with parts.guard():
            with torch.no_grad():
                encdec.encoder[4].weight.add_(1e-7)
    assert e.value.changed == ["encoder.4.weight (part 'encoder')"]
    with pytest.raises(pw.FrozenPartChanged, match="encoder.1.running_mean"):
        with pw.FrozenGuard(parts):
            encdec.encoder[1].running_mean[0] += 1
    with parts.guard(include_buffers=False):
        encdec.encoder[1].running_mean[0] += 1


def test_frozen_context_restores_exact_state(encdec):
    parts = pw.Parts(encdec)
    opt = pw.build_optimizer(parts, default={"name": "adam", "lr": 1e-2})
    train_steps(encdec, opt, 2)
    encdec.decoder[4].bias.requires_grad_(False)  # a user's own flag is restored too
    groups_before = [(g["part"], g["lr"], [id(p) for p in g["params"]]) for g in opt.param_groups]
    state_before = {id(p): {k: v.clone() for k, v in s.items()} for p, s in opt.state.items()}
    modes_before = [m.training for m in encdec.modules()]
    with parts.frozen("encoder"):
        assert not any(p.requires_grad for p in encdec.encoder.parameters())
        assert all(not g["params"] for g in opt.param_groups if g["part"] == "encoder")
        assert pw.state_bytes(opt, parts)["encoder"] == 0 and pw.kept_state_bytes(opt, parts)["encoder"] > 0
        encdec.eval()
    assert [(g["part"], g["lr"], [id(p) for p in g["params"]]) for g in opt.param_groups] == groups_before
    assert {id(p) for p in opt.state} == set(state_before)
    for p, s in opt.state.items():
        assert all(torch.equal(v, state_before[id(p)][k]) for k, v in s.items())
    assert [m.training for m in encdec.modules()] == modes_before
    assert not encdec.decoder[4].bias.requires_grad


def test_plain_module_freeze_and_unfreeze(encdec):
    enc = encdec.encoder
    pw.freeze(enc)
    encdec.train()
    out = encdec(torch.randn(4, 6)).sum()
    out.backward()
    assert all(p.grad is None for p in enc.parameters())
    assert all(p.grad is not None for p in encdec.decoder.parameters())
    assert not enc[1].training
    pw.unfreeze(enc)
    assert all(p.requires_grad for p in enc.parameters())
    encdec.train()
    assert enc[1].training and not enc[1]._forward_pre_hooks
