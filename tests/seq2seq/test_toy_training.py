"""End to end: tiny reference models learn to reverse short sequences with teacher forcing, and
greedy decoding / beam search then reproduce the reversal."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from partwise.seq2seq import PAD, beam_search, greedy_decode


@pytest.mark.parametrize("kind", ["gru-additive-bi", "transformer"])
def test_tiny_model_learns_to_reverse(kind: str, trained: Callable, reverse_data: Callable) -> None:
    model = trained(kind, 300)
    src, mask, _, gold = reverse_data(200, 6, torch.Generator().manual_seed(1234))
    expected = [row[row != PAD].tolist()[:-1] for row in gold]  # target without EOS
    greedy = greedy_decode(model, src, mask, max_len=lambda n: n + 2)
    beam = beam_search(model, src, mask, beam_size=3, max_len=lambda n: n + 2)
    greedy_acc = sum(a == b for a, b in zip(greedy, expected, strict=True)) / len(expected)
    beam_acc = sum(a == b for a, b in zip(beam, expected, strict=True)) / len(expected)
    assert greedy_acc >= 0.9
    assert beam_acc >= 0.9
