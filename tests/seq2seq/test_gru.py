"""GRU encoder/decoder specifics: g2p-en compatible layout, final-state handling, argument errors."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from partwise.seq2seq import BOS, GRUDecoder, GRUEncoder, Memory, Seq2Seq, gru_seq2seq


def test_plain_gru_pair_has_the_g2p_en_layout() -> None:
    # g2p-en's checkpoint20.npz: 29 graphemes, 74 phonemes, embedding 256, hidden 256, no attention,
    # 834,890 parameters held as embedding, GRU and output-Linear arrays.
    model = Seq2Seq(GRUEncoder(29, 256, 256), GRUDecoder(74, 256, 256))
    assert sum(p.numel() for p in model.parameters()) == 834_890
    assert set(model.state_dict()) == {
        "encoder.embed.weight", "decoder.embed.weight", "decoder.out.weight", "decoder.out.bias",
        *(f"{part}.rnn.{kind}_l0" for part in ("encoder", "decoder")
          for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")),
    }
    assert model.encoder.bridge is None


def test_unidirectional_final_is_the_last_hidden_state_of_each_row(batch_factory: Callable) -> None:
    torch.manual_seed(0)
    encoder = GRUEncoder(11, 6, 10, layers=2).eval()
    src, mask = batch_factory(3, 5)
    with torch.no_grad():
        memory = encoder(src, mask)
        for i in range(3):
            n = int(mask[i].sum())
            out, h_n = encoder.rnn(encoder.embed(src[i : i + 1, :n]))
            torch.testing.assert_close(memory.final[:, i : i + 1], h_n)
            torch.testing.assert_close(memory.states[i, :n], out[0])
            assert bool((memory.states[i, n:] == 0).all())


def test_decoder_without_attention_is_output_layer_over_gru_states(batch_factory: Callable) -> None:
    torch.manual_seed(0)
    model = Seq2Seq(GRUEncoder(11, 6, 10), GRUDecoder(13, 6, 10)).eval()
    src, mask = batch_factory(3, 5)
    prev = torch.tensor([[BOS, 5, 6], [BOS, 7, 8], [BOS, 4, 4]])
    with torch.no_grad():
        memory = model.encode(src, mask)
        states, _ = model.decoder.rnn(model.decoder.embed(prev), memory.final)
        torch.testing.assert_close(model(src, mask, prev), model.decoder.out(states))


def test_bidirectional_encoder_shapes_and_bridge(batch_factory: Callable) -> None:
    encoder = GRUEncoder(11, 6, 10, layers=2, bidirectional=True, dec_hidden=7)
    src, mask = batch_factory(3, 5)
    memory = encoder(src, mask)
    assert memory.states.shape == (3, 5, 20)
    assert memory.final.shape == (2, 3, 7)
    assert bool((memory.final.abs() < 1).all())  # tanh bridge
    assert encoder.output_dim == 20


def test_bidirectional_backward_direction_starts_at_each_rows_last_real_token(
        batch_factory: Callable) -> None:
    torch.manual_seed(0)
    encoder = GRUEncoder(11, 6, 10, bidirectional=True).eval()
    src, mask = batch_factory(3, 5, seed=7)
    with torch.no_grad():
        memory = encoder(src, mask)
        for i in range(3):
            n = int(mask[i].sum())
            out, _ = encoder.rnn(encoder.embed(src[i : i + 1, :n]))
            torch.testing.assert_close(memory.states[i, :n], out[0])


def test_factory_sizes_decoder_memory_to_the_encoder() -> None:
    model = gru_seq2seq(11, 13, emb=8, hidden=12, bidirectional=True, attention="dot")
    assert model.decoder.memory_dim == 24
    assert isinstance(model.decoder.attention.key, nn.Linear)  # 24 -> 12 projection ("general")
    same = gru_seq2seq(11, 13, emb=8, hidden=12, bidirectional=False, attention="dot")
    assert same.decoder.attention.key is None  # equal sizes: plain dot product


def test_unknown_attention_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"attention='luong' is unknown; use None, 'additive' or 'dot'"):
        gru_seq2seq(11, 13, attention="luong")


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"hidden": 0}, ValueError, "hidden=0 must be >= 1"),
        ({"emb": 2.5}, TypeError, "emb_dim=2.5 must be an int"),
        ({"layers": True}, TypeError, "layers=True must be an int"),
        ({"dropout": 1.0}, ValueError, r"dropout=1.0 must be in \[0, 1\)"),
    ],
)
def test_bad_sizes_are_named(kwargs: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        gru_seq2seq(11, 13, **kwargs)


def test_memory_size_mismatch_says_which_memory_dim_to_pass(batch_factory: Callable) -> None:
    encoder = GRUEncoder(11, 6, 10, bidirectional=True)
    decoder = GRUDecoder(13, 6, 10, attention="additive")
    src, mask = batch_factory(2, 4)
    with pytest.raises(ValueError, match="pass memory_dim=20"):
        decoder(torch.full((2, 3), BOS), encoder(src, mask))


def test_layer_mismatch_between_encoder_and_decoder_is_reported(batch_factory: Callable) -> None:
    src, mask = batch_factory(2, 4)
    memory = GRUEncoder(11, 6, 10, layers=1)(src, mask)
    with pytest.raises(ValueError, match=r"expected \(layers, B, hidden\) = \(2, 2, 10\)"):
        GRUDecoder(13, 6, 10, layers=2).initial_state(memory)


def test_missing_final_starts_from_zeros() -> None:
    memory = Memory(torch.zeros(2, 3, 10), torch.ones(2, 3, dtype=torch.bool))
    state = GRUDecoder(13, 6, 10, layers=2).initial_state(memory)
    assert state.shape == (2, 2, 10) and not bool(state.any())


def test_source_errors() -> None:
    encoder = GRUEncoder(11, 6, 10)
    src = torch.tensor([[0, 5, 6], [4, 5, 0]])
    with pytest.raises(ValueError, match="right-padded"):
        encoder(src, src != 0)
    with pytest.raises(ValueError, match=r"source rows \[1\] are empty"):
        encoder(torch.tensor([[4, 5], [0, 0]]), torch.tensor([[True, True], [False, False]]))
    with pytest.raises(ValueError, match="src_mask must be a bool tensor"):
        encoder(src, (src != 0).long())
    with pytest.raises(ValueError, match="src must be a .B, S. long tensor"):
        encoder(src.float(), src != 0)


def test_decoder_input_shapes_are_checked() -> None:
    decoder = GRUDecoder(13, 6, 10)
    memory = Memory(torch.zeros(2, 3, 10), torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="prev_tokens must be .B, T."):
        decoder(torch.full((2,), BOS), memory)
    with pytest.raises(ValueError, match="prev_token must be .B,."):
        decoder.step(torch.full((2, 1), BOS), memory, decoder.initial_state(memory))


def test_input_feeding_forward_equals_stepwise_decoding_and_the_feed_matters(batch_factory: Callable) -> None:
    torch.manual_seed(0)
    model = gru_seq2seq(11, 13, emb=6, hidden=10, input_feeding=True, dropout=0.0).eval()
    src, mask = batch_factory(3, 5)
    tgt = torch.randint(4, 13, (3, 4))
    tgt[:, 0] = BOS
    with torch.no_grad():
        memory = model.encoder(src, mask)
        full = model.decoder(tgt, memory)
        state, steps = model.decoder.initial_state(memory), []
        for t in range(tgt.shape[1]):
            logits, state = model.decoder.step(tgt[:, t], memory, state)
            steps.append(logits)
        torch.testing.assert_close(full, torch.stack(steps, 1))
        # the RNN really reads a_{t-1}: zeroing its input columns changes every position after the first
        model.decoder.rnn.weight_ih_l0[:, 6:] = 0
        cut = model.decoder(tgt, memory)
    torch.testing.assert_close(cut[:, 0], full[:, 0])
    assert not torch.allclose(cut[:, 1:], full[:, 1:])
    picked = model.decoder.reorder_state(state, torch.tensor([2, 0]))
    assert picked[0].shape == (1, 2, 10) and torch.equal(picked[1][0], state[1][2])


def test_input_feeding_needs_attention() -> None:
    with pytest.raises(ValueError, match="input_feeding=True feeds the attentional vector back; give an attention"):
        GRUDecoder(13, 6, 10, attention=None, input_feeding=True)


def test_deeper_encoder_hands_its_top_layers_to_a_shallower_decoder(batch_factory: Callable) -> None:
    torch.manual_seed(0)
    model = gru_seq2seq(11, 13, emb=6, hidden=10, layers=1, enc_layers=3, bidirectional=False, dropout=0.0).eval()
    src, mask = batch_factory(3, 5)
    with torch.no_grad():
        memory = model.encoder(src, mask)
        _, h_n = model.encoder.rnn(nn.utils.rnn.pack_padded_sequence(
            model.encoder.embed(src), mask.sum(1), batch_first=True, enforce_sorted=False))
    assert model.encoder.rnn.num_layers == 3 and memory.final.shape == (1, 3, 10)
    torch.testing.assert_close(memory.final[0], h_n[2])  # the top layer's final state
    assert model.decoder(torch.full((3, 2), BOS), memory).shape == (3, 2, 13)
    with pytest.raises(ValueError, match="dec_layers=2 is more than the encoder's layers=1"):
        GRUEncoder(11, 6, 10, layers=1, dec_layers=2)
