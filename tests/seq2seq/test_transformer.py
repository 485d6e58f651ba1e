"""Transformer specifics: causality, the incremental cache, positions, argument errors."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from partwise.seq2seq import BOS, TransformerDecoder, TransformerEncoder, transformer_seq2seq


def _model(max_len: int = 32):
    torch.manual_seed(0)
    return transformer_seq2seq(11, 13, d_model=16, heads=4, enc_layers=1, dec_layers=2, ff=24,
                               dropout=0.0, max_len=max_len).eval()


def test_self_attention_is_causal(batch_factory: Callable) -> None:
    model = _model()
    src, mask = batch_factory(2, 5)
    prev = torch.tensor([[BOS, 4, 5, 6, 7], [BOS, 8, 9, 10, 11]])
    changed = prev.clone()
    changed[:, 3] = 12
    with torch.no_grad():
        a, b = model(src, mask, prev), model(src, mask, changed)
    torch.testing.assert_close(a[:, :3], b[:, :3])
    assert not torch.allclose(a[:, 3:], b[:, 3:])


def test_cache_grows_one_position_per_step_and_keeps_cross_attention(batch_factory: Callable) -> None:
    model = _model()
    src, mask = batch_factory(3, 5)
    decoder = model.decoder
    with torch.no_grad():
        memory = model.encode(src, mask)
        assert decoder.initial_state(memory) is None
        _, first = decoder.step(torch.full((3,), BOS), memory, None)
        _, second = decoder.step(torch.full((3,), 4), memory, first)
    assert (first.position, second.position) == (1, 2)
    assert len(second.self_keys) == len(second.cross_keys) == 2
    assert second.self_keys[0].shape == (3, 4, 2, 4)  # (B, heads, positions, d_model / heads)
    assert second.cross_values[1].shape == (3, 4, 5, 4)
    assert second.cross_keys[0] is first.cross_keys[0]  # computed once, on the first step


def test_reorder_state_selects_every_cached_tensor(batch_factory: Callable) -> None:
    model = _model()
    src, mask = batch_factory(3, 5)
    with torch.no_grad():
        memory = model.encode(src, mask)
        _, cache = model.decoder.step(torch.full((3,), BOS), memory, None)
    index = torch.tensor([2, 2, 0])
    picked = model.decoder.reorder_state(cache, index)
    for before, after in zip(cache.self_keys + cache.self_values + cache.cross_keys + cache.cross_values,
                             picked.self_keys + picked.self_values + picked.cross_keys
                             + picked.cross_values, strict=True):
        torch.testing.assert_close(after, before[index])
    torch.testing.assert_close(picked.memory_mask, mask[index])
    assert picked.position == 1
    assert model.decoder.reorder_state(None, index) is None


def test_positions_are_fixed_and_not_saved() -> None:
    model = _model()
    assert not any("position" in name for name in model.state_dict())
    assert not any("position" in name for name, _ in model.named_parameters())


def test_sequences_longer_than_max_len_are_rejected(batch_factory: Callable) -> None:
    model = _model(max_len=4)
    src, mask = batch_factory(2, 4)
    with pytest.raises(ValueError, match="reaches position 5, beyond max_len=4"):
        model.encode(torch.cat([src, src[:, :1]], dim=1), torch.cat([mask, mask[:, :1]], dim=1))
    memory = model.encode(src, mask)
    with pytest.raises(ValueError, match="beyond max_len=4"):
        model.decoder(torch.full((2, 5), BOS), memory)
    state = None
    for _ in range(4):
        _, state = model.decoder.step(torch.full((2,), BOS), memory, state)
    with pytest.raises(ValueError, match="TransformerDecoder.step: sequence reaches position 5"):
        model.decoder.step(torch.full((2,), BOS), memory, state)


def test_heads_must_divide_d_model() -> None:
    with pytest.raises(ValueError, match=r"d_model=30 is not divisible by heads=4.*\[1, 2, 3, 5, 6, 10, 15\]"):
        transformer_seq2seq(11, 13, d_model=30, heads=4)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"enc_layers": 0}, ValueError, "layers=0 must be >= 1"),
        ({"ff": "64"}, TypeError, "ff='64' must be an int"),
        ({"max_len": -1}, ValueError, "max_len=-1 must be >= 1"),
        ({"dropout": -0.1}, ValueError, r"dropout=-0.1 must be in \[0, 1\)"),
    ],
)
def test_bad_sizes_are_named(kwargs: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        transformer_seq2seq(11, 13, **kwargs)


def test_forward_refuses_a_state(batch_factory: Callable) -> None:
    model = _model()
    src, mask = batch_factory(2, 4)
    memory = model.encode(src, mask)
    _, cache = model.decoder.step(torch.full((2,), BOS), memory, None)
    with pytest.raises(ValueError, match="continue from a TransformerCache with step"):
        model.decoder(torch.full((2, 3), BOS), memory, cache)


def test_encoder_and_decoder_can_be_built_separately(batch_factory: Callable) -> None:
    encoder = TransformerEncoder(11, 8, 2, 1, 16, dropout=0.0, max_len=10)
    decoder = TransformerDecoder(13, 8, 2, 1, 16, dropout=0.0, max_len=10)
    src, mask = batch_factory(2, 4)
    memory = encoder(src, mask)
    assert memory.final is None and memory.states.shape == (2, 4, 8)
    assert decoder(torch.full((2, 3), BOS), memory).shape == (2, 3, 13)
