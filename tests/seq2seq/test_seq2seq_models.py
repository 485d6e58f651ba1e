"""Behaviour every reference model (GRU variants and Transformer) must share."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from partwise.seq2seq import BOS, PAD, Memory, Seq2Seq


def _prev_tokens(batch: int, length: int, seed: int = 5) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    body = torch.randint(4, 13, (batch, length - 1), generator=g)
    return torch.cat([torch.full((batch, 1), BOS), body], dim=1)


def _stepwise(model: Seq2Seq, memory: Memory, prev: Tensor, state: object = None) -> Tensor:
    state = model.decoder.initial_state(memory) if state is None else state
    logits = []
    for t in range(prev.shape[1]):
        step_logits, state = model.decoder.step(prev[:, t], memory, state)
        logits.append(step_logits)
    return torch.stack(logits, dim=1)


def test_forward_matches_step_by_step(kind: str, model_factory: Callable, batch_factory: Callable) -> None:
    model = model_factory(kind)
    src, mask = batch_factory(5, 7)
    prev = _prev_tokens(5, 6)
    with torch.no_grad():
        parallel = model(src, mask, prev)
        stepwise = _stepwise(model, model.encode(src, mask), prev)
    assert parallel.shape == (5, 6, 13)
    torch.testing.assert_close(parallel, stepwise, atol=1e-5, rtol=0)


def test_extra_padding_changes_nothing(kind: str, model_factory: Callable, batch_factory: Callable) -> None:
    model = model_factory(kind)
    src, mask = batch_factory(4, 5)
    prev = _prev_tokens(4, 4)
    wide_src = torch.cat([src, torch.full((4, 3), PAD)], dim=1)
    wide_mask = torch.cat([mask, torch.zeros(4, 3, dtype=torch.bool)], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(model(src, mask, prev), model(wide_src, wide_mask, prev),
                                   atol=1e-5, rtol=0)


def test_rows_alone_equal_rows_in_a_padded_batch(kind: str, model_factory: Callable,
                                                 batch_factory: Callable) -> None:
    model = model_factory(kind)
    src, mask = batch_factory(4, 6, seed=3)
    prev = _prev_tokens(4, 5)
    with torch.no_grad():
        batched = model(src, mask, prev)
        for i in range(4):
            n = int(mask[i].sum())
            alone = model(src[i : i + 1, :n], mask[i : i + 1, :n], prev[i : i + 1])
            torch.testing.assert_close(batched[i : i + 1], alone, atol=1e-5, rtol=0)


def test_padded_memory_positions_are_not_attended(kind: str, model_factory: Callable,
                                                  batch_factory: Callable) -> None:
    model = model_factory(kind)
    src, mask = batch_factory(4, 6, seed=2)
    assert not bool(mask.all())
    prev = _prev_tokens(4, 5)
    with torch.no_grad():
        memory = model.encode(src, mask)
        noisy = Memory(memory.states + 50.0 * (~mask)[:, :, None], memory.mask, memory.final)
        torch.testing.assert_close(model.decoder(prev, memory), model.decoder(prev, noisy))


def test_reorder_state_follows_selected_rows(kind: str, model_factory: Callable,
                                             batch_factory: Callable) -> None:
    model = model_factory(kind)
    src, mask = batch_factory(4, 5, seed=4)
    prev = _prev_tokens(4, 5)
    index = torch.tensor([2, 0, 0, 3, 1])
    with torch.no_grad():
        memory = model.encode(src, mask)
        state = model.decoder.initial_state(memory)
        for t in range(2):
            _, state = model.decoder.step(prev[:, t], memory, state)
        state = model.decoder.reorder_state(state, index)
        continued = _stepwise(model, memory.index_select(index), prev[index, 2:], state)
        fresh = model(src[index], mask[index], prev[index])[:, 2:]
    torch.testing.assert_close(continued, fresh, atol=1e-5, rtol=0)


def test_every_parameter_gets_a_gradient(kind: str, model_factory: Callable, batch_factory: Callable) -> None:
    # Unused parameters would break DistributedDataParallel and make freezing reports misleading.
    model = model_factory(kind, dropout=0.1).train()
    src, mask = batch_factory(3, 5)
    model(src, mask, _prev_tokens(3, 4)).logsumexp(-1).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_dropout_is_active_in_train_mode_only(kind: str, model_factory: Callable,
                                              batch_factory: Callable) -> None:
    model = model_factory(kind, dropout=0.3)
    src, mask = batch_factory(3, 5)
    prev = _prev_tokens(3, 4)
    with torch.no_grad():
        torch.testing.assert_close(model(src, mask, prev), model(src, mask, prev))
        model.train()
        assert not torch.allclose(model(src, mask, prev), model(src, mask, prev))


def test_default_parts_are_encoder_and_decoder_with_a_linear_head(kind: str,
                                                                  model_factory: Callable) -> None:
    model = model_factory(kind)
    assert list(dict(model.named_children())) == ["encoder", "decoder"]
    assert isinstance(model.decoder.out, nn.Linear)
    assert model.decoder.out.out_features == 13


def test_head_swap_changes_the_output_vocabulary(kind: str, model_factory: Callable,
                                                 batch_factory: Callable) -> None:
    model = model_factory(kind)
    old = model.decoder.out
    model.decoder.out = nn.Linear(old.in_features, 21)
    src, mask = batch_factory(2, 4)
    with torch.no_grad():
        assert model(src, mask, _prev_tokens(2, 3)).shape == (2, 3, 21)


def test_seq2seq_rejects_parts_that_do_not_follow_the_protocol() -> None:
    with pytest.raises(TypeError, match="encoder must be a torch.nn.Module"):
        Seq2Seq(lambda s, m: None, nn.Linear(2, 2))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="lacks initial_state, step, reorder_state"):
        Seq2Seq(nn.Identity(), nn.Linear(2, 2))


def test_encode_requires_a_memory(batch_factory: Callable) -> None:
    from partwise.seq2seq import GRUDecoder

    class Bare(nn.Module):
        def forward(self, src: Tensor, src_mask: Tensor) -> Tensor:
            return src

    model = Seq2Seq(Bare(), GRUDecoder(5, 4, 4))
    src, mask = batch_factory(2, 3)
    with pytest.raises(TypeError, match="returned Tensor; it must return partwise.seq2seq.Memory"):
        model.encode(src, mask)
