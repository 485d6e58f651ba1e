"""Ensembles decode with the mean of their members' log-probabilities: two copies of one model decode
exactly as that model (greedy and beam); members of different architectures decode together."""

from __future__ import annotations

import torch

from partwise.seq2seq import Ensemble, beam_search, greedy_decode, gru_seq2seq, transformer_seq2seq


def models():
    torch.manual_seed(0)
    gru = gru_seq2seq(12, 14, emb=8, hidden=16, attention="dot").eval()
    tf = transformer_seq2seq(12, 14, d_model=16, heads=2, enc_layers=1, dec_layers=1, ff=32, dropout=0.0).eval()
    return gru, tf


SRC = torch.tensor([[4, 5, 6, 7, 3], [8, 9, 3, 0, 0], [5, 5, 11, 3, 0]])


def test_an_ensemble_of_two_copies_of_a_model_decodes_as_that_model():
    for model in models():
        twice = Ensemble([model, model])
        assert greedy_decode(twice, SRC, SRC != 0, 8) == greedy_decode(model, SRC, SRC != 0, 8)
        assert beam_search(twice, SRC, SRC != 0, 3, 8) == beam_search(model, SRC, SRC != 0, 3, 8)
        prev = torch.tensor([[2, 4, 5], [2, 6, 7], [2, 8, 9]])
        with torch.no_grad():
            torch.testing.assert_close(twice(SRC, SRC != 0, prev), torch.log_softmax(model(SRC, SRC != 0, prev), -1))


def test_members_of_different_architectures_average_their_log_probabilities():
    gru, tf = models()
    both = Ensemble([gru, tf])
    prev = torch.tensor([[2, 4, 5], [2, 6, 7], [2, 8, 9]])
    with torch.no_grad():
        mean = (torch.log_softmax(gru(SRC, SRC != 0, prev), -1) + torch.log_softmax(tf(SRC, SRC != 0, prev), -1)) / 2
        torch.testing.assert_close(both(SRC, SRC != 0, prev), mean)
    out = beam_search(both, SRC, SRC != 0, 3, 8)
    assert len(out) == 3 and all(len(row) <= 8 for row in out)
