"""Model surgery: head swaps, weight transfer with a report, vocabulary-aware rows, loading one part."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from partwise import CheckpointError, PartError, Parts
from partwise._run._checkpoint import save_checkpoint
from partwise._run._surgery import load_part, replace_module, transfer_state
from partwise.data import Vocab
from partwise.seq2seq import GRUDecoder, GRUEncoder, Seq2Seq


def gru(src: int = 10, tgt: int = 12, hidden: int = 16, seed: int = 0) -> Seq2Seq:
    torch.manual_seed(seed)
    return Seq2Seq(GRUEncoder(src, 8, hidden), GRUDecoder(tgt, 8, hidden))


def tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def named(**children: nn.Module) -> nn.Module:
    model = nn.Module()
    for name, child in children.items():
        model.add_module(name, child)
    return model


# -- replace_module -----------------------------------------------------------------------------
def test_swap_decoder_head_for_a_new_vocabulary_size():
    model = gru(tgt=12)
    old_head = model.decoder.out
    new_head = nn.Linear(16, 20)
    assert replace_module(model, "decoder.out", new_head) is old_head
    assert model.decoder.out is new_head
    src = torch.tensor([[4, 5, 3]])
    logits = model(src, src != 0, torch.tensor([[2, 7]]))
    assert logits.shape == (1, 2, 20)
    parts = Parts(model)  # built after surgery: owns the new head's parameters
    assert any(p is new_head.weight for p in parts["decoder"].parameters())
    assert not any(p is old_head.weight for p in parts["decoder"].parameters())


def test_numeric_path_components_index_sequential_and_modulelist():
    model = nn.Sequential(nn.Linear(4, 4), nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)]))
    second = model[1][1]
    new = nn.Linear(4, 2)
    assert replace_module(model, "1.1", new) is second
    assert model[1][1] is new
    assert "1.1.weight" in dict(model.named_parameters())


def test_wrong_path_names_the_closest_paths_and_changes_nothing():
    model = gru()
    before = dict(model.named_modules())
    with pytest.raises(PartError, match="'decoder.out'") as info:
        replace_module(model, "decoder.outt", nn.Linear(16, 3))
    assert "decoder.outt" in str(info.value)
    assert dict(model.named_modules()) == before


def test_new_module_takes_the_old_dtype_and_mode_unless_told_not_to():
    model = gru().double().eval()
    head = nn.Linear(16, 5)
    replace_module(model, "decoder.out", head)
    assert head.weight.dtype == torch.float64
    assert not head.training
    kept = nn.Linear(16, 5)
    replace_module(model, "decoder.out", kept, match_device=False)
    assert kept.weight.dtype == torch.float32


def test_an_empty_slot_can_be_filled_and_a_cycle_is_refused():
    model = gru()
    assert model.encoder.bridge is None
    bridge = nn.Linear(16, 16)
    assert replace_module(model, "encoder.bridge", bridge) is None
    assert model.encoder.bridge is bridge
    with pytest.raises(PartError, match="contain"):
        replace_module(model, "decoder.out", nn.Sequential(model.decoder))


# -- transfer_state ---------------------------------------------------------------------------
def test_report_lists_copied_shape_skipped_missing_and_unexpected():
    torch.manual_seed(0)
    source = named(enc=nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8)), head=nn.Linear(8, 3),
                   extra=nn.Linear(2, 2))
    source.enc[1].running_mean.fill_(0.5)
    target = named(enc=nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8)), head=nn.Linear(8, 5),
                   new=nn.Linear(3, 3))
    head_before = target.head.weight.detach().clone()
    report = transfer_state(source, target)

    assert set(report.copied) == {k for k in source.state_dict() if k.startswith("enc.")}
    assert torch.equal(target.enc[0].weight, source.enc[0].weight)
    assert torch.equal(target.enc[1].running_mean, torch.full((8,), 0.5))  # buffers travel too
    assert set(report.skipped_shape) == {("head.weight", (3, 8), (5, 8)), ("head.bias", (3,), (5,))}
    assert torch.equal(target.head.weight, head_before)
    assert report.missing == ("new.weight", "new.bias")
    assert report.unexpected == ("extra.weight", "extra.bias")
    assert report.counts == {"copied": 7, "skipped_shape": 2, "missing": 2, "unexpected": 2}
    text = str(report)
    assert "7 copied, 2 skipped (shape), 2 missing, 2 unexpected" in text.splitlines()[0]
    assert "head.weight: (3, 8) vs (5, 8)" in text
    assert "new.bias" in text and "extra.weight" in text


def test_rename_by_prefix_respects_dotted_components():
    torch.manual_seed(0)
    source = named(enc=nn.Linear(3, 3), encx=nn.Linear(3, 3))
    target = named(encoder=nn.Linear(3, 3), encx=nn.Linear(3, 3))
    report = transfer_state(source, target, rename={"enc": "encoder"})
    assert torch.equal(target.encoder.weight, source.enc.weight)
    assert torch.equal(target.encx.weight, source.encx.weight)  # "enc" does not match "encx"
    assert report.missing == () and report.unexpected == ()


def test_rename_callable_can_drop_tensors_and_collisions_are_refused():
    source = named(a=nn.Linear(2, 2), b=nn.Linear(2, 2))
    target = named(a=nn.Linear(2, 2), b=nn.Linear(2, 2))
    report = transfer_state(source, target, rename=lambda n: None if n.startswith("b.") else n)
    assert report.copied == ("a.weight", "a.bias")
    assert report.unexpected == ("b.weight", "b.bias")
    before = tensors(target)
    with pytest.raises(PartError, match="both rename to 'a.weight'"):
        transfer_state(source, target, rename={"b": "a"})
    assert_same(tensors(target), before)


def test_vocabulary_map_copies_rows_by_token_and_new_rows_get_the_mean():
    old_vocab = Vocab(["AA", "B", "K", "T", "Z"])
    new_vocab = Vocab(["B", "CH", "K", "T", "X1", "X2", "AA"])  # dropped Z; new CH, X1, X2
    source = gru(tgt=len(old_vocab), seed=1)
    target = gru(tgt=len(new_vocab), seed=2)
    names = ("decoder.embed.weight", "decoder.out.weight", "decoder.out.bias")
    report = transfer_state(source, target, vocab_map={n: (old_vocab, new_vocab) for n in names})

    src_state, tgt_state = source.state_dict(), target.state_dict()
    for name in names:
        for token in new_vocab.tokens:
            row = tgt_state[name][new_vocab.index(token)]
            if token in old_vocab:
                assert torch.equal(row, src_state[name][old_vocab.index(token)]), (name, token)
            else:
                assert torch.allclose(row, src_state[name].mean(dim=0)), (name, token)
    assert torch.equal(target.encoder.rnn.weight_hh_l0, source.encoder.rnn.weight_hh_l0)
    assert set(report.copied) == set(tgt_state)
    info = {v.name: v for v in report.vocab}
    assert info["decoder.out.bias"].mapped == 8  # 4 specials + AA B K T
    assert info["decoder.out.bias"].new_tokens == ("CH", "X1", "X2")
    assert info["decoder.out.bias"].dropped == 1
    assert "3 new = mean of old rows: 'CH', 'X1', 'X2'" in str(report)


def test_vocabulary_of_the_wrong_size_is_an_error_and_leaves_the_target_untouched():
    old_vocab, new_vocab = Vocab(["a", "b"]), Vocab(["a", "b", "c"])
    source, target = gru(tgt=6), gru(tgt=7, seed=3)
    before = tensors(target)
    with pytest.raises(ValueError, match=r"old vocabulary has 7 tokens but the source tensor has shape \(6, 8\)"):
        transfer_state(source, target, vocab_map={"decoder.embed.weight": (old_vocab.tokens + ["x"], new_vocab)})
    with pytest.raises(ValueError, match="new vocabulary has 8 tokens"):
        transfer_state(source, target, vocab_map={"decoder.embed.weight": (old_vocab, new_vocab.tokens + ["y"])})
    with pytest.raises(PartError, match="decoder.embed.weigth"):
        transfer_state(source, target, vocab_map={"decoder.embed.weigth": (old_vocab, new_vocab)})
    assert_same(tensors(target), before)


def test_strict_shapes_raises_listing_shapes_and_changes_nothing():
    source, target = gru(tgt=6), gru(tgt=7, seed=3)
    before = tensors(target)
    with pytest.raises(PartError, match=r"decoder.out.weight: source \(6, 16\) vs target \(7, 16\)"):
        transfer_state(source, target, strict_shapes=True)
    assert_same(tensors(target), before)


def test_source_may_be_a_state_dict_or_a_checkpoint(tmp_path: Path):
    source, target = gru(seed=1), gru(seed=2)
    save_checkpoint(tmp_path / "checkpoints", "step-00000001", source, Parts(source), {}, {})
    report = transfer_state(tmp_path, target)
    assert report.counts["copied"] == len(source.state_dict()) and not report.missing
    assert_same(tensors(target), tensors(source))
    fresh = gru(seed=3)
    transfer_state({"decoder.out.bias": torch.ones(12)}, fresh)
    assert torch.equal(fresh.decoder.out.bias, torch.ones(12))


# -- load_part ----------------------------------------------------------------------------------
def test_load_part_loads_one_part_from_a_run_directory(tmp_path: Path):
    saved, model = gru(seed=1), gru(seed=2)
    save_checkpoint(tmp_path / "checkpoints", "step-00000001", saved, Parts(saved), {}, {})
    decoder_before = {k: v for k, v in tensors(model).items() if k.startswith("decoder.")}
    loaded = load_part(model, "encoder", tmp_path)
    assert loaded == [n for n in saved.state_dict() if n.startswith("encoder.")]
    for name in loaded:
        assert torch.equal(model.state_dict()[name], saved.state_dict()[name])
    assert_same({k: v for k, v in tensors(model).items() if k.startswith("decoder.")}, decoder_before)


def test_load_part_missing_part_names_what_the_checkpoint_has(tmp_path: Path):
    saved, model = gru(seed=1), gru(seed=2)
    ckpt = save_checkpoint(tmp_path, "step-1", saved, Parts(saved, {"enc": "encoder", "dec": "decoder"}), {}, {})
    before = tensors(model)
    with pytest.raises(CheckpointError, match=r"no part 'encoder'; it has \['dec', 'enc'\].*source_part"):
        load_part(model, "encoder", ckpt)
    with pytest.raises(PartError, match="no part 'encodr'"):
        load_part(model, "encodr", ckpt)
    assert_same(tensors(model), before)
    load_part(model, "encoder", ckpt, source_part="enc")
    assert torch.equal(model.encoder.embed.weight, saved.encoder.embed.weight)


def test_load_part_wrong_shapes_or_names_list_every_problem(tmp_path: Path):
    wide, model = gru(hidden=24, seed=1), gru(hidden=16, seed=2)
    wide_ckpt = save_checkpoint(tmp_path / "a", "step-1", wide, Parts(wide), {}, {})
    before = tensors(model)
    with pytest.raises(CheckpointError) as info:
        load_part(model, "decoder", wide_ckpt)
    message = str(info.value)
    assert "decoder.rnn.weight_hh_l0: checkpoint shape (72, 24) vs model (48, 16)" in message
    assert "decoder.out.weight: checkpoint shape (12, 24) vs model (12, 16)" in message

    split = gru(seed=3)  # its "decoder" part was saved without the output layer
    spec = {"encoder": "encoder", "decoder": ["decoder", "!decoder.out"], "head": "decoder.out"}
    split_ckpt = save_checkpoint(tmp_path / "b", "step-1", split, Parts(split, spec), {}, {})
    with pytest.raises(CheckpointError, match=r"decoder.out.weight \(part 'decoder'\) is missing from the checkpoint"):
        load_part(model, "decoder", split_ckpt)
    with pytest.raises(CheckpointError, match="decoder.embed.weight is in the checkpoint but not in part 'head'"):
        load_part(model, "head", split_ckpt, parts=Parts(model, spec), source_part="decoder")
    assert_same(tensors(model), before)


def test_load_part_bad_path_is_a_clear_file_not_found(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match=r"load_part\(\): no complete checkpoint at .*nowhere"):
        load_part(gru(), "encoder", tmp_path / "nowhere")


def test_load_part_from_a_run_directory_takes_the_best_checkpoint_unless_told(tmp_path: Path):
    from partwise._run._checkpoint import save_checkpoint as save

    best, later, model = gru(seed=1), gru(seed=2), gru(seed=3)
    save(tmp_path / "checkpoints", "step-00000001", best, Parts(best), {}, {}, pointers=("latest", "best"))
    save(tmp_path / "checkpoints", "step-00000002", later, Parts(later), {}, {}, pointers=("latest",))
    load_part(model, "encoder", tmp_path)
    assert torch.equal(model.encoder.embed.weight, best.encoder.embed.weight)
    load_part(model, "encoder", tmp_path, which="latest")
    assert torch.equal(model.encoder.embed.weight, later.encoder.embed.weight)
    with pytest.raises(ValueError, match="which='last'"):
        load_part(model, "encoder", tmp_path, which="last")
