"""The part registry: selectors, one part per parameter, shared tensors, clear errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import partwise as pw


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Module()
        self.encoder.embed = nn.Embedding(10, 4)
        self.encoder.proj = nn.Linear(4, 4)
        self.decoder = nn.Module()
        self.decoder.rnn = nn.GRU(4, 4)
        self.decoder.out = nn.Linear(4, 10)
        self.decoder.out.weight = self.encoder.embed.weight  # tied input/output embedding


def test_default_parts_are_top_level_children_with_parameters(encdec):
    model = nn.Sequential()
    model.add_module("encoder", encdec.encoder)
    model.add_module("act", nn.ReLU())  # owns no parameter: no part
    model.add_module("decoder", encdec.decoder)
    parts = pw.Parts(model)
    assert parts.names == ["encoder", "decoder"]
    assert {id(p) for p in parts["encoder"].parameters()} == {id(p) for p in encdec.encoder.parameters()}
    assert parts["decoder"].numel == sum(p.numel() for p in encdec.decoder.parameters())


def test_every_parameter_in_exactly_one_part_with_rest(encdec):
    encdec.scale = nn.Parameter(torch.ones(1))  # on the root: no child owns it
    with pytest.warns(UserWarning, match="form part 'rest': scale"):
        parts = pw.Parts(encdec)
    assert parts.names == ["encoder", "decoder", "rest"]
    assert [n for n, _ in parts["rest"].named_parameters()] == ["scale"]
    seen = [id(p) for part in parts for p in part.parameters()]
    assert sorted(seen) == sorted(id(p) for p in encdec.parameters())


def test_selector_kinds_glob_regex_type_and_exclusion():
    model = nn.Module()
    model.encoder = nn.Sequential(nn.Embedding(5, 4), nn.Linear(4, 4), nn.BatchNorm1d(4))
    model.decoder = nn.Module()
    model.decoder.layers = nn.ModuleList([nn.Linear(4, 4) for _ in range(3)])
    model.decoder.out = nn.Linear(4, 5)
    spec = {
        "embeds": "re:.*0\\.weight",  # encoder.0.weight (embedding), decoder.layers.0.weight
        "norms": "type:BatchNorm1d",
        "top": "decoder.layers.2",
        "layers": ["decoder.layers.*", "!decoder.layers.2", "!re:.*0\\.weight"],
        "head": "decoder.out",
    }
    with pytest.warns(UserWarning, match="rest"):
        parts = pw.Parts(model, spec)
    assert sorted(n for n, _ in parts["embeds"].named_parameters()) == ["decoder.layers.0.weight", "encoder.0.weight"]
    assert sorted(n for n, _ in parts["norms"].named_parameters()) == ["encoder.2.bias", "encoder.2.weight"]
    assert sorted(n for n, _ in parts["layers"].named_parameters()) == [
        "decoder.layers.0.bias", "decoder.layers.1.bias", "decoder.layers.1.weight"
    ]
    assert sorted(n for n, _ in parts["rest"].named_parameters()) == ["encoder.1.bias", "encoder.1.weight"]


def test_overlapping_selectors_name_parameter_and_both_parts(encdec):
    with pytest.raises(pw.PartError) as e:
        pw.Parts(encdec, {"decoder": "decoder", "head": "decoder.4"})
    msg = str(e.value)
    assert "'decoder.4.weight'" in msg and "'decoder'" in msg and "'head'" in msg
    parts = pw.Parts(encdec, {"encoder": "encoder", "decoder": ["decoder", "!decoder.4"], "head": "decoder.4"})
    assert [n for n, _ in parts["head"].named_parameters()] == ["decoder.4.weight", "decoder.4.bias"]


def test_unknown_path_names_closest_and_leaves_model_untouched(encdec):
    flags = [p.requires_grad for p in encdec.parameters()]
    with pytest.raises(pw.PartError, match="'encoder'") as e:
        pw.Parts(encdec, {"enc": "encodr", "dec": "decoder"})
    assert "encodr" in str(e.value)
    assert [p.requires_grad for p in encdec.parameters()] == flags
    assert all(not m._forward_pre_hooks for m in encdec.modules())


def test_all_selector_errors_reported_at_once(encdec):
    with pytest.raises(pw.PartError) as e:
        pw.Parts(encdec, {"a": "encodr", "b": "re:nothing.*", "c": "type:Conv9d"})
    msg = str(e.value)
    assert "encodr" in msg and "nothing" in msg and "Conv9d" in msg


def test_unknown_part_name_in_freeze_names_closest(encdec):
    parts = pw.Parts(encdec)
    with pytest.raises(pw.PartError, match="closest.*'encoder'"):
        parts.freeze("encoderr")
    assert all(p.requires_grad for p in encdec.parameters())


def test_shared_tensors_listed_and_never_half_frozen():
    model = Tied()
    parts = pw.Parts(model)
    (shared,) = parts.shared()
    assert shared.names == ("encoder.embed.weight", "decoder.out.weight")
    assert shared.parts == ("encoder", "decoder") and shared.owner == "encoder"
    with pytest.raises(pw.PartError, match="decoder.out.weight.*'decoder'.*stays trainable"):
        parts.freeze("encoder")
    assert model.encoder.embed.weight.requires_grad  # nothing changed
    with pytest.raises(pw.PartError, match="freeze both"):
        parts.freeze("decoder")
    parts.freeze("encoder", "decoder")
    assert not model.encoder.embed.weight.requires_grad
    with pytest.raises(pw.PartError, match="stays frozen"):
        parts.unfreeze("decoder")
    parts.unfreeze("decoder", "encoder")
    assert model.decoder.out.weight.requires_grad


def test_table_lists_parts_counts_state_modes_and_shared():
    model = Tied()
    parts = pw.Parts(model)
    parts.freeze("encoder", "decoder")
    parts.unfreeze("encoder", "decoder")
    parts.freeze("encoder", "decoder", norm="train")
    table = parts.table()
    assert "encoder" in table and "decoder" in table and "frozen" in table
    assert f"{parts['encoder'].numel:,}" in table
    assert "encoder.embed.weight" in table  # the shared tensor
    assert "pinned eval: dropout" in table


def test_bad_spec_types():
    with pytest.raises(pw.PartError, match="'rest'"):
        pw.Parts(nn.Linear(2, 2), {"rest": "weight"})
    with pytest.raises(TypeError, match="nn.Module"):
        pw.Parts("not a model")  # type: ignore[arg-type]


def test_a_part_reads_like_an_nn_module(encdec):
    part = pw.Parts(encdec)["encoder"]
    assert [id(p) for p in part.parameters()] == [id(p) for p in encdec.encoder.parameters()]
    assert [n for n, _ in part.named_parameters()][0] == "encoder.0.weight"
    assert {n for n, _ in part.named_buffers()} >= {"encoder.1.running_mean", "encoder.1.running_var"}
    assert len(list(part.buffers())) == len(list(encdec.encoder.buffers()))
    assert encdec.encoder[3] in list(part.modules())  # the Dropout: covered though it has no parameter
    assert part.num_parameters == len(list(encdec.encoder.parameters()))
    assert part.numel == sum(p.numel() for p in encdec.encoder.parameters())
