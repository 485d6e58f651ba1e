"""Per-part optimizers: groups, separate optimizers, identity checks, name-keyed state."""

from __future__ import annotations

import copy

import pytest
import torch

import partwise as pw
from core_helpers import EncDec, train_steps


def test_groups_per_part_with_own_lr_and_no_decay_on_biases_and_norms(encdec):
    parts = pw.Parts(encdec)
    opt = pw.build_optimizer(parts, per_part={"encoder": {"lr": 1e-5}}, default={"lr": 1e-3, "weight_decay": 0.05})
    assert isinstance(opt, torch.optim.AdamW)
    by_key = {(g["part"], g["no_decay"]): g for g in opt.param_groups}
    assert set(by_key) == {("encoder", False), ("encoder", True), ("decoder", False), ("decoder", True)}
    assert by_key[("encoder", False)]["lr"] == 1e-5 and by_key[("decoder", False)]["lr"] == 1e-3
    nodecay = {id(p) for p in by_key[("decoder", True)]["params"]}
    assert nodecay == ({id(encdec.decoder[i].bias) for i in (0, 4)}
                       | {id(encdec.decoder[1].weight), id(encdec.decoder[1].bias)})
    assert by_key[("decoder", True)]["weight_decay"] == 0.0 and by_key[("decoder", False)]["weight_decay"] == 0.05
    flat = pw.build_optimizer(parts, default={"weight_decay": 0.05}, no_decay=None)
    assert all(not g["no_decay"] for g in flat.param_groups)
    by_regex = pw.build_optimizer(parts, default={"weight_decay": 0.05}, no_decay=[r".*\.4\.weight"])
    assert sum(len(g["params"]) for g in by_regex.param_groups if g["no_decay"]) == 2


def test_frozen_part_left_out_and_joins_on_unfreeze_with_its_options(encdec):
    parts = pw.Parts(encdec)
    parts.freeze("encoder")
    opt = pw.build_optimizer(parts, per_part={"encoder": {"lr": 1e-5}})
    groups = list(opt.param_groups)
    assert {g["part"] for g in opt.param_groups if g["params"]} == {"decoder"}
    parts.unfreeze("encoder")
    assert {g["lr"] for g in opt.param_groups if g["part"] == "encoder" and g["params"]} == {1e-5}
    pw.check_optimizer(opt, parts)
    parts.freeze("decoder")
    assert {g["part"] for g in opt.param_groups if g["params"]} == {"encoder"}
    assert opt.param_groups == groups  # the same groups throughout: schedulers keep working
    pw.check_optimizer(opt, parts)


def test_any_torch_optimizer_by_name_or_class_and_bad_options_all_reported(encdec):
    parts = pw.Parts(encdec)
    opt = pw.build_optimizer(parts, default={"name": torch.optim.Adagrad, "lr": 0.1})
    assert isinstance(opt, torch.optim.Adagrad)
    with pytest.raises(pw.PartError) as e:
        pw.build_optimizer(parts, per_part={"encoder": {"name": "adamz"}, "decoder": {"momentum": 0.9}, "encodr": {}})
    msg = str(e.value)
    assert "'adamz'" in msg and "adamw" in msg and "momentum" in msg and "encodr" in msg
    with pytest.raises(pw.PartError, match="separate=True"):
        pw.build_optimizer(parts, per_part={"encoder": {"name": "sgd"}})
    parts.freeze(*parts.names)
    with pytest.raises(pw.PartError, match="nothing to optimize"):
        pw.build_optimizer(parts)


def test_check_optimizer_lists_offenders_of_a_hand_built_optimizer(encdec):
    parts = pw.Parts(encdec)
    dup = torch.optim.SGD([{"params": list(encdec.encoder.parameters())}, {"params": [encdec.decoder[0].bias]}], lr=0.1)
    dup.param_groups[1]["params"].append(encdec.encoder[0].weight)  # torch checks at construction only
    with pytest.raises(pw.PartError) as e:
        pw.check_optimizer(dup, parts)
    msg = str(e.value)
    assert "in two groups: encoder.0.weight" in msg
    assert "trainable but in no group" in msg and "decoder.0.weight" in msg
    parts.freeze("decoder")
    stale = torch.optim.SGD(encdec.parameters(), lr=0.1)
    with pytest.raises(pw.PartError, match="frozen but still in a group: decoder"):
        pw.check_optimizer(stale, parts)


def test_separate_optimizers_equal_one_optimizer_with_groups():
    def run(separate: bool) -> EncDec:
        torch.manual_seed(0)
        model = EncDec()
        parts = pw.Parts(model)
        opt = pw.build_optimizer(
            parts,
            per_part={"encoder": {"lr": 0.05}, "decoder": {"lr": 0.2}},
            default={"name": "sgd", "momentum": 0.9, "weight_decay": 1e-3},
            separate=separate,
        )
        torch.manual_seed(1)
        train_steps(model, opt, 6)
        return model

    a, b = run(False), run(True)
    torch.manual_seed(0)
    start = EncDec()
    for (n, pa), pb, p0 in zip(a.named_parameters(), b.parameters(), start.parameters(), strict=True):
        assert torch.equal(pa, pb), n
        if not n.endswith("0.bias"):  # a bias right before BatchNorm gets zero gradient
            assert not torch.equal(pa, p0), n


def test_optimizer_set_different_classes_freeze_and_state_dict(encdec):
    parts = pw.Parts(encdec)
    opts = pw.build_optimizer(
        parts, per_part={"encoder": {"name": "sgd", "lr": 0.1, "momentum": 0.9}}, default={"name": "adam", "lr": 1e-3},
        separate=True,
    )
    assert isinstance(opts, pw.OptimizerSet)
    assert isinstance(opts["encoder"], torch.optim.SGD) and isinstance(opts["decoder"], torch.optim.Adam)
    assert len(opts.param_groups) == len(opts["encoder"].param_groups) + len(opts["decoder"].param_groups)
    train_steps(encdec, opts, 2)
    sd = opts.state_dict()
    assert set(sd["optimizers"]) == {"encoder", "decoder"}
    assert "encoder.0.weight" in sd["optimizers"]["encoder"]["state"]
    enc_opt = opts["encoder"]
    parts.freeze("encoder")
    assert not any(g["params"] for g in enc_opt.param_groups) and pw.state_bytes(opts, parts)["encoder"] == 0
    parts.unfreeze("encoder")
    assert opts["encoder"] is enc_opt and not enc_opt.state  # the same optimizer, fresh state
    opts.load_state_dict(sd)
    exp = sd["optimizers"]["encoder"]["state"]["encoder.0.weight"]["momentum_buffer"]
    assert torch.equal(opts["encoder"].state[encdec.encoder[0].weight]["momentum_buffer"], exp)


def test_state_dict_survives_freeze_unfreeze_and_rebuild():
    """Name-keyed state loads into a rebuilt optimizer whose group order differs, and training
    then continues exactly as without the interruption."""
    torch.manual_seed(0)
    model = EncDec()
    parts = pw.Parts(model)
    opt = pw.build_optimizer(parts, default={"name": "adamw", "lr": 1e-2, "weight_decay": 0.01})
    train_steps(model, opt, 3)
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    assert set(saved_opt["state"]) == {n for n, _ in model.named_parameters()}

    reference = copy.deepcopy(model)
    ref_opt = pw.build_optimizer(pw.Parts(reference), default={"name": "adamw", "lr": 1e-2, "weight_decay": 0.01})
    ref_opt.load_state_dict(copy.deepcopy(saved_opt))  # torch aliases loaded state tensors
    torch.manual_seed(5)  # dropout draws
    train_steps(reference, ref_opt, 3, seed=5)

    parts.freeze("encoder")
    parts.unfreeze("encoder")  # the encoder's parameters are back in their own groups, fresh
    assert [g["part"] for g in opt.param_groups][0] == "encoder" and not opt.state.get(model.encoder[0].weight)
    rebuilt = pw.build_optimizer(parts, default={"name": "adamw", "lr": 1e-2, "weight_decay": 0.01})
    model.load_state_dict(saved_model)
    for o in (opt, rebuilt):
        o.load_state_dict(copy.deepcopy(saved_opt))
        for n, p in model.named_parameters():
            assert torch.equal(o.state[p]["exp_avg"], saved_opt["state"][n]["exp_avg"]), n
    torch.manual_seed(5)
    train_steps(model, opt, 3, seed=5)
    for (n, a), b in zip(model.named_parameters(), reference.parameters(), strict=True):
        assert torch.equal(a, b), n


def test_plain_torch_state_dict_still_loads(encdec):
    parts = pw.Parts(encdec)
    plain = torch.optim.AdamW(
        [{"params": g["params"]} for g in pw.build_optimizer(parts).param_groups], lr=1e-3
    )
    train_steps(encdec, plain, 1)
    opt = pw.build_optimizer(parts)
    opt.load_state_dict(plain.state_dict())
    assert len(opt.state) == len(list(encdec.parameters()))


def test_parts_state_dict_round_trip(encdec):
    parts = pw.Parts(encdec)
    parts.freeze("encoder", norm="train")
    other = pw.Parts(copy.deepcopy(encdec))
    other.load_state_dict(parts.state_dict())
    assert other.frozen_names == ["encoder"] and other.freeze_modes("encoder") == ("train", "eval")
    other.load_state_dict({"frozen": {"decoder": {}}})
    assert other.frozen_names == ["decoder"]
    with pytest.raises(pw.PartError, match="unknown part"):
        other.load_state_dict({"frozen": {"head": {}}})


