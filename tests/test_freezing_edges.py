"""Frozen means frozen at the edges: fixed parameters, re-entrant and composed freezes, parameter-less
layers, root parameters, hooks, stale registries, tied tensors, optimizer state and user schedulers.

Each test names the hole it closes (see the freezing-at-the-edges issue); each failed on the design
before this one.
"""

from __future__ import annotations

import copy
import gc
import weakref

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import partwise as pw
from core_helpers import EncDec, snapshot, train_steps


class WithFixed(nn.Module):
    """An encoder holding a table created with requires_grad=False (a sinusoidal position table)."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(6, 8), nn.Tanh())
        self.encoder.register_parameter("pos", nn.Parameter(torch.randn(8), requires_grad=False))
        self.decoder = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x) + self.encoder.pos)


def step(model: nn.Module, opt, n: int = 3, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(n):
        model.train()
        x = torch.randn(8, 6, generator=gen)
        loss = model(x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


# 1 -- trainability restored, never invented ---------------------------------------------------------
def test_unfreeze_never_makes_a_fixed_parameter_trainable():
    model = WithFixed()
    parts = pw.Parts(model)
    assert parts["encoder"].fixed == ["encoder.pos"]
    parts.freeze("encoder")
    parts.unfreeze("encoder")
    assert not model.encoder.pos.requires_grad and model.encoder[0].weight.requires_grad
    opt = pw.build_optimizer(parts, default={"name": "adamw", "lr": 0.1, "weight_decay": 0.5})
    assert all(p is not model.encoder.pos for g in opt.param_groups for p in g["params"])
    before = model.encoder.pos.detach().clone()
    step(model, opt)
    assert torch.equal(model.encoder.pos, before)
    table = parts.table()
    assert "fixed" in table.splitlines()[0] and "8" in next(r for r in table.splitlines() if r.startswith("encoder"))
    pw.freeze(model.encoder)
    pw.unfreeze(model.encoder)
    assert not model.encoder.pos.requires_grad


def test_plan_naming_a_part_of_only_fixed_parameters_is_refused():
    model = WithFixed()
    parts = pw.Parts(model, {"pos": "re:encoder\\.pos", "encoder": ["encoder", "!re:encoder\\.pos"],
                             "decoder": "decoder"})
    plan = pw.Plan([pw.Phase("p", epochs=1, train={"pos": 1e-3, "decoder": 1e-3})])
    with pytest.raises(pw.ConfigError, match="'pos' holds only fixed parameters"):
        plan.check(parts)


# 2 -- frozen() on a part already frozen; no empty list means "all" ----------------------------------
def test_frozen_block_on_an_already_frozen_part_changes_nothing():
    torch.manual_seed(0)
    model = EncDec()
    parts = pw.Parts(model)
    parts.freeze("encoder")
    opt = pw.build_optimizer(parts)
    with parts.frozen("encoder"):
        assert model.decoder[0].weight.requires_grad  # the decoder is not frozen by the block
    assert parts.frozen_names == ["encoder"]
    assert all(not g["params"] for g in opt.param_groups if g["part"] == "encoder")
    stats = model.encoder[1].running_mean.clone()
    model.train()
    model(torch.randn(4, 6))
    assert torch.equal(model.encoder[1].running_mean, stats)  # still pinned to eval
    with pytest.raises(pw.PartError, match="no part names"):
        parts.freeze()
    with pytest.raises(pw.PartError, match="no part names"):
        parts.unfreeze(*[])


# 3 -- every module a frozen part covers is pinned and guarded, however selected ---------------------
class ParamlessInside(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4, affine=False), nn.Dropout(0.5))
        self.dec = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dec(self.enc(x))


@pytest.mark.parametrize("spec", [{"enc": "re:enc\\..*", "dec": "dec"}, {"dec": "dec"}, None],
                         ids=["regex", "rest", "no-spec"])
def test_parameterless_layers_of_a_frozen_part_are_pinned_and_guarded(spec):
    model = ParamlessInside()
    with pytest.warns(UserWarning, match="rest") if spec == {"dec": "dec"} else _nothing():
        parts = pw.Parts(model, spec)
    frozen = "rest" if spec == {"dec": "dec"} else "enc"
    parts.freeze(frozen)
    stats = model.enc[1].running_mean.clone()
    model.train()
    x = torch.randn(8, 4)
    out1, out2 = model(x), model(x)
    assert torch.equal(model.enc[1].running_mean, stats)
    assert not model.enc[2].training and torch.equal(out1, out2)  # dropout off
    with pytest.raises(pw.FrozenPartChanged, match="enc.1.running_mean"), parts.guard():
        model.enc[1].running_mean += 1


def _nothing():
    import contextlib

    return contextlib.nullcontext()


# 4 -- a parameter on the root never pins the whole model --------------------------------------------
class RootParam(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))
        self.enc = nn.Linear(4, 4)
        self.dec = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dec(F.dropout(self.enc(x), 0.5, training=self.training)) * self.scale


def test_root_parameter_does_not_pin_the_root():
    model = RootParam()
    with pytest.warns(UserWarning, match="form part 'rest': scale"):
        parts = pw.Parts(model)
    assert parts.names == ["enc", "dec", "rest"]
    parts.freeze("rest")
    model.train()
    x = torch.randn(16, 4)
    model(x)
    assert model.training  # the root's own dropout still follows the model's mode
    assert not torch.equal(model(x), model(x))


# 5 -- the eval pin runs before other forward pre-hooks ----------------------------------------------
def test_spectral_norm_of_a_frozen_layer_does_not_iterate():
    model = nn.Sequential()
    model.add_module("enc", nn.utils.spectral_norm(nn.Linear(4, 4)))
    model.add_module("dec", nn.Linear(4, 2))
    parts = pw.Parts(model)
    parts.freeze("enc")
    u = model.enc.weight_u.clone()
    model.train()
    with parts.guard():
        model(torch.randn(3, 4))
    assert torch.equal(model.enc.weight_u, u)


# 6 -- registries and pw.freeze compose ---------------------------------------------------------------
def test_two_registries_release_a_pin_only_when_nobody_holds_it():
    torch.manual_seed(0)
    model = EncDec()
    a = pw.Parts(model)
    with pytest.warns(UserWarning, match="rest"):
        b = pw.Parts(model, {"bn": "encoder.1"})
    a.freeze("encoder")
    with b.frozen("bn"):
        pass
    assert a.is_frozen("encoder")
    stats = model.encoder[1].running_mean.clone()
    model.train()
    model(torch.randn(8, 6))
    assert torch.equal(model.encoder[1].running_mean, stats)
    assert not model.encoder[1].weight.requires_grad


def test_plain_freeze_and_a_registry_compose():
    model = EncDec()
    parts = pw.Parts(model)
    pw.freeze(model.encoder)
    parts.freeze("encoder")
    parts.unfreeze("encoder")
    assert not any(p.requires_grad for p in model.encoder.parameters())  # pw.freeze still holds it
    model.train()
    assert not model.encoder[1].training or model.encoder[1]._forward_pre_hooks
    pw.unfreeze(model.encoder)
    assert all(p.requires_grad for p in model.encoder.parameters())
    model.train()
    assert model.encoder[1].training and not model.encoder[1]._forward_pre_hooks


# 7 -- a registry notices parameters replaced under it -------------------------------------------------
def test_parameters_replaced_under_the_registry_are_detected():
    torch.manual_seed(0)
    model = EncDec()
    parts = pw.Parts(model)
    parts.freeze("encoder")
    opt = pw.build_optimizer(parts)
    other = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    with pytest.raises(pw.PartError, match="changed under its Parts registry.*replaced.*build Parts"), parts.guard():
        model.load_state_dict(other, assign=True)
    for call in (lambda: pw.check_optimizer(opt, parts), lambda: parts.unfreeze("encoder"),
                 lambda: parts.freeze("decoder")):
        with pytest.raises(pw.PartError, match="build Parts"):
            call()
    pw.replace_module(model, "decoder.4", nn.Linear(16, 5))
    fresh = pw.Parts(model)
    fresh.freeze("decoder")  # a rebuilt registry works


# 8 -- tied tensors reached through modules no selector names belong to parts that exist ------------
class MarianShaped(nn.Module):
    """shared embedding = encoder.embed_tokens = decoder.embed_tokens, tied to lm_head (no bias)."""

    def __init__(self) -> None:
        super().__init__()
        self.model = nn.Module()
        self.model.shared = nn.Embedding(20, 8)
        self.model.encoder = nn.Module()
        self.model.encoder.embed_tokens = self.model.shared
        self.model.encoder.layer = nn.Linear(8, 8)
        self.model.decoder = nn.Module()
        self.model.decoder.embed_tokens = self.model.shared
        self.model.decoder.layer = nn.Linear(8, 8)
        self.lm_head = nn.Linear(8, 20, bias=False)
        self.lm_head.weight = self.model.shared.weight


def test_shared_embedding_reached_through_unnamed_modules_is_freezable():
    model = MarianShaped()
    with pytest.warns(UserWarning, match="no selector names.*lm_head.weight.*untie"):
        parts = pw.Parts(model, {"encoder": "model.encoder", "decoder": "model.decoder"})
    assert parts.names == ["encoder", "decoder"]
    assert all(set(t.parts) <= set(parts.names) for t in parts.shared())
    parts.freeze(*parts.names)
    assert not model.lm_head.weight.requires_grad
    state = parts.state_dict()
    with pytest.warns(UserWarning):
        again = pw.Parts(copy.deepcopy(model), {"encoder": "model.encoder", "decoder": "model.decoder"})
    again.load_state_dict(state)
    assert again.frozen_names == ["encoder", "decoder"]


# 9 -- a plan that half-freezes a tied tensor is refused before training -----------------------------
class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Embedding(10, 4)
        self.decoder = nn.Linear(4, 10, bias=False)
        self.decoder.weight = self.encoder.weight


def test_plan_that_half_freezes_a_tied_tensor_is_refused_whole():
    parts = pw.Parts(Tied())
    plan = pw.Plan([pw.Phase("both", epochs=1, train={"encoder": 1e-3, "decoder": 1e-3}),
                    pw.Phase("decoder", epochs=1, train={"decoder": 1e-3})])
    with pytest.raises(pw.ConfigError, match=r"phases\[1\] \('decoder'\) freezes 'encoder'.*encoder.weight"):
        plan.check(parts)
    with pytest.raises(pw.ConfigError):
        plan.describe(parts)


# 10 -- no optimizer state kept for frozen parameters --------------------------------------------------
def test_freeze_frees_the_optimizer_state_of_the_frozen_part():
    torch.manual_seed(0)
    model = EncDec()
    parts = pw.Parts(model)
    opt = pw.build_optimizer(parts, default={"name": "adam", "lr": 1e-2})
    train_steps(model, opt, 2)
    refs = [weakref.ref(v) for p in model.encoder.parameters() for v in opt.state[p].values() if v.ndim]
    assert refs and pw.state_bytes(opt, parts)["encoder"] > 0
    parts.freeze("encoder")
    gc.collect()
    assert all(r() is None for r in refs)
    assert pw.state_bytes(opt, parts)["encoder"] == 0 and pw.kept_state_bytes(opt, parts)["encoder"] == 0
    with pytest.raises(pw.PartError, match="keep_state=True"):
        parts.unfreeze("encoder", restore_state=True)
    parts.unfreeze("encoder")
    parts.freeze("encoder", keep_state=True)
    assert pw.kept_state_bytes(opt, parts)["encoder"] == 0  # fresh state: nothing was kept yet
    parts.unfreeze("encoder")
    train_steps(model, opt, 1)
    parts.freeze("encoder", keep_state=True)
    kept = pw.kept_state_bytes(opt, parts)["encoder"]
    assert kept == (2 * 4 * sum(p.numel() for p in model.encoder.parameters())
                    + 4 * len(list(model.encoder.parameters())))
    parts.unfreeze("encoder", restore_state=True)
    assert pw.state_bytes(opt, parts)["encoder"] == kept and pw.kept_state_bytes(opt, parts)["encoder"] == 0


def test_an_optimizer_built_by_the_user_never_moves_a_frozen_part():
    torch.manual_seed(0)
    model = EncDec()
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.5)  # built before the freeze
    train_steps(model, opt, 2)
    parts = pw.Parts(model)
    parts.freeze("encoder")
    before = snapshot(model.encoder)
    train_steps(model, opt, 3, zero_grads_everywhere=True)  # zero grads: weight decay and momentum would apply
    after = snapshot(model.encoder)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(p in opt.state for p in model.encoder.parameters())


# 11 -- the user's LR schedulers keep working across freeze and unfreeze ------------------------------
@pytest.mark.parametrize("make_sched", [
    lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda s: 0.9 ** s),
    lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.1, total_steps=20),
    lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=10),
], ids=["LambdaLR", "OneCycleLR", "CosineAnnealingLR"])
def test_lr_schedulers_survive_freeze_and_unfreeze(make_sched):
    torch.manual_seed(0)
    model = EncDec()
    parts = pw.Parts(model)
    parts.freeze("encoder")  # frozen at build time: its groups exist, empty
    opt = pw.build_optimizer(parts, default={"name": "sgd", "lr": 0.05, "momentum": 0.9})
    sched = make_sched(opt)
    reference = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.05, momentum=0.9)
    ref_sched = make_sched(reference)
    for i in range(6):
        train_steps(model, opt, 1, seed=i)
        sched.step()
        reference.step()
        ref_sched.step()
        if i == 1:
            parts.unfreeze("encoder")
        if i == 3:
            parts.freeze("decoder")
        assert {g["lr"] for g in opt.param_groups} == {reference.param_groups[0]["lr"]}


# 12 -- one mechanism: the Trainer keeps its optimizer across phases ----------------------------------
def test_trainer_keeps_one_optimizer_across_phases_of_the_same_class():
    torch.manual_seed(0)
    model = EncDec()
    parts = pw.Parts(model)
    plan = pw.Plan([pw.Phase("dec", steps=2, train={"decoder": 1e-2}),
                    pw.Phase("all", steps=2, train={"decoder": 1e-2, "encoder": 1e-3})])
    seen = []
    cb = type("C", (), {"on_phase_start": lambda self, tr, span: seen.append(tr.optimizer)})()
    data = torch.utils.data.TensorDataset(torch.randn(32, 6), torch.randint(0, 3, (32,)))
    trainer = pw.Trainer(model, parts, plan, lambda m, b: F.cross_entropy(m(b[0]), b[1]), batch_size=16,
                         callbacks=[cb])
    trainer.fit(data)
    assert len(seen) == 2 and seen[0] is seen[1]


def test_phase_switching_optimizer_class_starts_that_state_fresh():
    torch.manual_seed(0)
    model = EncDec()
    parts = pw.Parts(model)
    plan = pw.Plan([pw.Phase("sgd", steps=2, train={"decoder": 1e-2}, optimizer={"name": "sgd", "momentum": 0.9}),
                    pw.Phase("adamw", steps=2, train={"decoder": 1e-3, "encoder": 1e-3})])
    data = torch.utils.data.TensorDataset(torch.randn(32, 6), torch.randint(0, 3, (32,)))
    trainer = pw.Trainer(model, parts, plan, lambda m, b: F.cross_entropy(m(b[0]), b[1]), batch_size=16)
    with pytest.warns(RuntimeWarning, match=r"decoder \(SGD -> AdamW\).*starts fresh"):
        trainer.fit(data)
    assert isinstance(trainer.optimizer, torch.optim.AdamW) and trainer.step == 4
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_optimizer_set_state_of_another_class_is_not_loaded():
    model = EncDec()
    parts = pw.Parts(model)
    sgd = pw.build_optimizer(parts, default={"name": "sgd", "lr": 0.1, "momentum": 0.9}, separate=True)
    train_steps(model, sgd, 1)
    adamw = pw.build_optimizer(parts, separate=True)
    with pytest.warns(RuntimeWarning, match="saved by SGD not loaded into AdamW"):
        adamw.load_state_dict(sgd.state_dict())
    train_steps(model, adamw, 1)
    with pytest.warns(RuntimeWarning, match="SGD"):
        assert pw.load_state_by_name(adamw, sgd.state_dict()) == 0


# 13 -- name-keyed state checks shapes; user groups are handled --------------------------------------
def test_state_for_a_resized_head_is_not_loaded_and_training_goes_on():
    torch.manual_seed(0)
    model = EncDec()
    opt = pw.build_optimizer(pw.Parts(model))
    train_steps(model, opt, 2)
    saved = opt.state_dict()
    pw.replace_module(model, "decoder.4", nn.Linear(16, 5))
    opt = pw.build_optimizer(pw.Parts(model))
    with pytest.warns(RuntimeWarning, match=r"decoder.4.weight \(saved \[3, 16\].*now \[5, 16\]"):
        opt.load_state_dict(copy.deepcopy(saved))
    assert model.decoder[4].weight not in opt.state and model.encoder[0].weight in opt.state
    with pytest.warns(RuntimeWarning, match="decoder.4.bias"):
        assert pw.load_state_by_name(opt, saved) == len(list(model.parameters())) - 2
    step_in = torch.randn(8, 6)
    opt.zero_grad()
    model(step_in).sum().backward()
    opt.step()  # no shape error


def test_user_added_param_group_is_saved_and_loaded():
    model = EncDec()
    opt = pw.build_optimizer(pw.Parts(model), default={"name": "adam", "lr": 1e-2})
    extra = nn.Parameter(torch.randn(3))
    opt.add_param_group({"params": [extra], "lr": 0.5})
    extra.grad = torch.ones(3)
    train_steps(model, opt, 1)
    sd = opt.state_dict()
    assert f"<group {len(opt.param_groups) - 1} param 0>" in sd["state"]
    again = pw.build_optimizer(pw.Parts(model), default={"name": "adam", "lr": 1e-2})
    again.add_param_group({"params": [extra], "lr": 0.1})
    again.load_state_dict(copy.deepcopy(sd))
    assert again.param_groups[-1]["lr"] == 0.5
    assert torch.equal(again.state[extra]["exp_avg"], opt.state[extra]["exp_avg"])


class SharedStack(nn.Module):
    """A T5-shaped stack: it holds the shared embedding (another part's) and its own dropout."""

    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.Embedding(10, 4)
        self.encoder = nn.Module()
        self.encoder.embed_tokens = self.shared
        self.encoder.layer = nn.Linear(4, 4)
        self.encoder.dropout = nn.Dropout(0.5)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.encoder.dropout(self.encoder.layer(self.encoder.embed_tokens(ids)))


def test_a_module_shared_by_parts_is_pinned_once_all_of_them_are_frozen():
    model = SharedStack()
    parts = pw.Parts(model, {"embeddings": "shared", "encoder": ["encoder", "!encoder.embed_tokens"]})
    ids = torch.randint(0, 10, (6, 5))
    parts.freeze("encoder")
    model.train()
    assert model.encoder.dropout.training  # the stack also holds the trainable embedding: not pinned
    parts.freeze("embeddings")
    model.train()
    assert torch.equal(model(ids), model(ids)) and not model.encoder.dropout.training
    parts.unfreeze("embeddings")
    model.train()
    assert model.encoder.dropout.training


def test_a_phase_that_drops_an_option_or_turns_weight_decay_on_gets_what_it_says():
    """In-place reconfiguration between phases never keeps a previous phase's option by accident."""
    torch.manual_seed(0)
    model = EncDec()
    parts = pw.Parts(model)
    opt = pw.build_optimizer(parts, default={"name": "sgd", "lr": 0.1, "momentum": 0.9})  # no weight decay
    assert pw.reconfigure(opt, parts, {"decoder": {"lr": 0.05}}, {"name": "sgd"})
    assert {g["momentum"] for g in opt.param_groups} == {0.0} and {g["lr"] for g in opt.param_groups} >= {0.05}
    # weight decay turned on: biases and norm weights already have their own groups, which keep none
    assert pw.reconfigure(opt, parts, {}, {"name": "sgd", "weight_decay": 0.05})
    assert {g["no_decay"]: g["weight_decay"] for g in opt.param_groups} == {False: 0.05, True: 0.0}


def test_trainer_phase_turning_weight_decay_on_keeps_biases_without_decay():
    torch.manual_seed(0)
    model = EncDec()
    parts = pw.Parts(model)
    plan = pw.Plan([pw.Phase("a", steps=1, train={"decoder": 1e-2}, optimizer={"weight_decay": 0.0}),
                    pw.Phase("b", steps=1, train={"decoder": 1e-2}, optimizer={"weight_decay": 0.1})])
    data = torch.utils.data.TensorDataset(torch.randn(32, 6), torch.randint(0, 3, (32,)))
    trainer = pw.Trainer(model, parts, plan, lambda m, b: F.cross_entropy(m(b[0]), b[1]), batch_size=16)
    trainer.fit(data)
    bias = model.decoder[0].bias
    group = next(g for g in trainer.optimizer.param_groups if any(p is bias for p in g["params"]))
    assert group["no_decay"] and group["weight_decay"] == 0.0


def test_no_decay_takes_one_regex_or_several():
    parts = pw.Parts(EncDec())
    one = pw.build_optimizer(parts, default={"weight_decay": 0.05}, no_decay=r".*\.4\.weight")
    several = pw.build_optimizer(parts, default={"weight_decay": 0.05}, no_decay=[r".*\.4\.weight"])
    count = [sum(len(g["params"]) for g in o.param_groups if g["no_decay"]) for o in (one, several)]
    assert count == [2, 2]
