"""Greedy decoding and beam search: hand-computed cases on a bigram model with known
probabilities, then properties on the reference models (briefly trained on a toy reversal task, so
that their outputs end at varied lengths and beam search often disagrees with greedy)."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
import torch

from partwise.seq2seq import EOS, beam_search, greedy_decode, gru_seq2seq, transformer_seq2seq

# BigramModel modes are chosen by the source's first token: 4 -> mode 0, 5 -> mode 1, 6 -> mode 2.
MIXED_SRC = torch.tensor([[4, 7], [5, 7], [6, 0]])


def test_greedy_follows_the_most_likely_token_and_stops_each_row_at_eos(bigram) -> None:
    out = greedy_decode(bigram, MIXED_SRC, MIXED_SRC != 0, max_len=3)
    assert out == [[4, 6], [], [4, 4, 4]]


def test_greedy_stops_as_soon_as_every_row_has_finished(bigram) -> None:
    src = MIXED_SRC[:2]
    assert greedy_decode(bigram, src, src != 0, max_len=50) == [[4, 6], []]
    assert bigram.decoder.calls == 3  # BOS -> 4 -> 6 -> EOS, then no further step


def test_greedy_max_len_as_a_function_of_each_rows_source_length(bigram) -> None:
    src = torch.tensor([[6, 4, 4], [6, 4, 0], [6, 0, 0]])
    out = greedy_decode(bigram, src, src != 0, max_len=lambda n: n + 1)
    assert out == [[4] * 4, [4] * 3, [4] * 2]


def test_beam_search_finds_the_most_probable_sequence_greedy_misses(bigram) -> None:
    src = MIXED_SRC[:2]
    assert beam_search(bigram, src, src != 0, beam_size=2, max_len=10, length_penalty=0.0) == [[5], []]


def test_length_penalty_one_ranks_by_mean_log_probability(bigram) -> None:
    src = MIXED_SRC[:1]
    assert beam_search(bigram, src, src != 0, beam_size=3, max_len=10, length_penalty=1.0) == [[4, 6]]


def test_search_goes_on_while_a_live_hypothesis_scores_better_than_the_finished_ones(bigram) -> None:
    src = torch.tensor([[7]])
    assert greedy_decode(bigram, src, src != 0, max_len=5) == [[]]
    assert beam_search(bigram, src, src != 0, beam_size=2, max_len=5, length_penalty=0.0) == [[]]
    assert beam_search(bigram, src, src != 0, beam_size=2, max_len=5, length_penalty=1.0) == [[4, 6]]


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_single_beam_is_greedy_on_the_bigram(bigram, length_penalty: float) -> None:
    out = beam_search(bigram, MIXED_SRC, MIXED_SRC != 0, beam_size=1, max_len=3,
                      length_penalty=length_penalty)
    assert out == [[4, 6], [], [4, 4, 4]]


def test_beam_at_max_len_keeps_the_best_unfinished_hypothesis(bigram) -> None:
    src = torch.tensor([[4], [6]])
    # One step allowed: 4 (p=0.6) beats 5 (p=0.4) and nothing has ended yet.
    assert beam_search(bigram, src, src != 0, beam_size=2, max_len=1, length_penalty=0.0) == [[4], [4]]
    out = beam_search(bigram, src, src != 0, beam_size=2, max_len=lambda n: n + 2)
    assert out == [[4, 6], [4, 4, 4]]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"beam_size": 0}, ValueError, "beam_size=0 must be an int >= 1"),
        ({"max_len": 0}, ValueError, "max_len gave 0 for some row; it must be >= 1"),
        ({"max_len": lambda n: "long"}, TypeError, "max_len must be an int or return an int"),
        ({"length_penalty": "1"}, TypeError, "length_penalty='1' must be a float"),
    ],
)
def test_bad_decoding_arguments(bigram, kwargs: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        beam_search(bigram, MIXED_SRC, MIXED_SRC != 0, **kwargs)


def test_greedy_rejects_a_zero_max_len(bigram) -> None:
    with pytest.raises(ValueError, match="greedy_decode\\(\\): max_len gave 0"):
        greedy_decode(bigram, MIXED_SRC, MIXED_SRC != 0, max_len=0)


@pytest.mark.parametrize("length_penalty", [0.0, 0.6, 1.0])
def test_single_beam_equals_greedy_on_reference_models(kind: str, trained: Callable,
                                                       batch_factory: Callable,
                                                       length_penalty: float) -> None:
    model = trained(kind, 40)
    src, mask = batch_factory(6, 5)
    greedy = greedy_decode(model, src, mask, max_len=8)
    assert beam_search(model, src, mask, beam_size=1, max_len=8, length_penalty=length_penalty) == greedy


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_beam_scores_at_least_as_well_as_greedy(kind: str, trained: Callable,
                                                batch_factory: Callable, score: Callable,
                                                length_penalty: float) -> None:
    model = trained(kind, 40)
    src, mask = batch_factory(6, 5, seed=8)
    max_len = 6
    greedy = greedy_decode(model, src, mask, max_len=max_len)
    beam = beam_search(model, src, mask, beam_size=4, max_len=max_len, length_penalty=length_penalty)
    for i in range(6):
        row_src, row_mask = src[i : i + 1], mask[i : i + 1]
        hyps = [greedy[i], beam[i]]
        g, b = score(model, row_src.expand(2, -1), row_mask.expand(2, -1), hyps, length_penalty,
                     eos=[len(h) < max_len for h in hyps])
        assert b >= g - 1e-6, (i, hyps, g, b)


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
@pytest.mark.parametrize("family", ["gru", "transformer"])
def test_a_wide_beam_finds_the_exhaustive_optimum(family: str, batch_factory: Callable,
                                                  score: Callable, length_penalty: float) -> None:
    # Six target tokens and two steps: 1 + 5 + 25 hypotheses, all of which fit in 30 beams.
    torch.manual_seed(11)
    if family == "gru":
        model = gru_seq2seq(11, 6, emb=8, hidden=8, dropout=0.0)
    else:
        model = transformer_seq2seq(11, 6, d_model=8, heads=2, enc_layers=1, dec_layers=1, ff=16,
                                    dropout=0.0, max_len=8)
    model.eval()
    src, mask = batch_factory(3, 4)
    found = beam_search(model, src, mask, beam_size=30, max_len=2, length_penalty=length_penalty)
    others = [t for t in range(6) if t != EOS]
    hyps = [[]] + [[a] for a in others] + [list(p) for p in itertools.product(others, repeat=2)]
    ended = [len(h) < 2 for h in hyps]
    for i in range(3):
        n = len(hyps)
        scores = score(model, src[i : i + 1].expand(n, -1), mask[i : i + 1].expand(n, -1), hyps,
                       length_penalty, eos=ended)
        assert found[i] == hyps[max(range(n), key=scores.__getitem__)]


def test_batched_decoding_equals_row_by_row(kind: str, trained: Callable,
                                            batch_factory: Callable) -> None:
    model = trained(kind, 40)
    src, mask = batch_factory(5, 6, seed=9)
    greedy = greedy_decode(model, src, mask, max_len=7)
    beam = beam_search(model, src, mask, beam_size=3, max_len=7)
    for i in range(5):
        n = int(mask[i].sum())
        row_src, row_mask = src[i : i + 1, :n], mask[i : i + 1, :n]
        assert greedy_decode(model, row_src, row_mask, max_len=7) == [greedy[i]]
        assert beam_search(model, row_src, row_mask, beam_size=3, max_len=7) == [beam[i]]


def test_results_respect_max_len_and_contain_no_eos(kind: str, trained: Callable,
                                                    batch_factory: Callable) -> None:
    model = trained(kind, 40)
    src, mask = batch_factory(6, 5)
    for out in (greedy_decode(model, src, mask, max_len=4),
                beam_search(model, src, mask, beam_size=3, max_len=4)):
        assert len(out) == 6
        assert all(len(row) <= 4 and EOS not in row for row in out)


def test_decoding_leaves_training_mode_and_autograd_alone(model_factory: Callable,
                                                          batch_factory: Callable) -> None:
    model = model_factory("gru-additive-bi").train()
    src, mask = batch_factory(2, 4)
    greedy_decode(model, src, mask, max_len=3)
    beam_search(model, src, mask, beam_size=2, max_len=3)
    assert model.training
    assert torch.is_grad_enabled()
