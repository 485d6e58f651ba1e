"""The frozen-encoder output cache: same training as the live encoder, refused when unsafe."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import partwise as pw
from partwise._train._cache import EncoderCache
from partwise.data import Seq2SeqDataset, Vocab, collate
from partwise.seq2seq import Memory, Seq2SeqTask, gru_seq2seq


def reversal_data(n: int = 256) -> Seq2SeqDataset:
    g = torch.Generator().manual_seed(0)
    letters = list("abcdefgh")
    pairs = []
    for _ in range(n):
        k = int(torch.randint(2, 7, (1,), generator=g))
        word = [letters[i] for i in torch.randint(0, 8, (k,), generator=g).tolist()]
        pairs.append((word, [c.upper() for c in reversed(word)]))
    src = Vocab.build(s for s, _ in pairs)
    tgt = Vocab.build(t for _, t in pairs)
    return Seq2SeqDataset(pairs, src, tgt)


def train(data: Seq2SeqDataset, cache: str, model: nn.Module | None = None, encoder_phase: bool = False,
          dropout: str = "eval") -> tuple[nn.Module, pw.Trainer]:
    torch.manual_seed(0)
    model = model or gru_seq2seq(len(data.src_vocab), len(data.tgt_vocab), emb=16, hidden=32, attention="dot",
                                 dropout=0.2)
    phases = [pw.Phase("decoder", epochs=2, train={"decoder": 1e-2}, dropout=dropout)]
    if encoder_phase:
        phases.append(pw.Phase("all", epochs=1, train={"decoder": 1e-2, "encoder": 1e-3}))
    trainer = pw.Trainer(model, pw.Parts(model), pw.Plan(phases), Seq2SeqTask(), batch_size=32,
                         collate_fn=collate, cache=cache, device="cpu")
    trainer.fit(data)
    return model, trainer


def test_cached_training_matches_live_encoder_and_encoder_stays_fixed():
    data = reversal_data()
    live, t_live = train(data, "off")
    cached, t_cached = train(data, "on")
    assert t_live.cache is None and t_cached.cache is not None and t_cached.cache.verified
    assert t_cached.cache.nbytes > 0
    torch.manual_seed(0)
    initial = gru_seq2seq(len(data.src_vocab), len(data.tgt_vocab), emb=16, hidden=32, attention="dot", dropout=0.2)
    for (name, a), b, c in zip(live.named_parameters(), cached.parameters(), initial.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
        if name.startswith("encoder"):
            assert torch.equal(b, c), name


def test_cache_dropped_when_a_phase_trains_the_encoder():
    _, trainer = train(reversal_data(), "auto", encoder_phase=True)
    assert trainer.cache is None and trainer.span.phase.name == "all"


class NoisyEncoder(nn.Module):
    """Adds noise to its memory even in eval mode: not cacheable."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, src: torch.Tensor, src_mask: torch.Tensor) -> Memory:
        m = self.inner(src, src_mask)
        return Memory(m.states + 0.01 * torch.randn_like(m.states), m.mask, m.final)


def noisy_model(data: Seq2SeqDataset) -> nn.Module:
    torch.manual_seed(0)
    model = gru_seq2seq(len(data.src_vocab), len(data.tgt_vocab), emb=16, hidden=32, attention="dot")
    model.encoder = NoisyEncoder(model.encoder)
    return model


def test_cache_refused_for_non_deterministic_encoder():
    data = reversal_data()
    with pytest.raises(pw.ConfigError, match="not deterministic"):
        train(data, "on", model=noisy_model(data))
    with pytest.warns(RuntimeWarning, match="cache not used: the encoder is not deterministic"):
        _, trainer = train(data, "auto", model=noisy_model(data))
    assert trainer.cache is None and trainer.step > 0


def test_cache_refused_when_frozen_encoder_keeps_dropout_in_train_mode():
    with pytest.raises(pw.ConfigError, match="train mode"):
        train(reversal_data(), "on", dropout="train")


def test_cache_spills_to_memory_mapped_files(tmp_path):
    data = reversal_data(64)
    torch.manual_seed(0)
    model = gru_seq2seq(len(data.src_vocab), len(data.tgt_vocab), emb=16, hidden=32, attention="dot").eval()
    task = Seq2SeqTask()
    in_memory = EncoderCache.build(task, model, data, collate, torch.device("cpu"), batch_size=16)
    on_disk = EncoderCache.build(task, model, data, collate, torch.device("cpu"), batch_size=16,
                                 spill_dir=tmp_path, spill_bytes=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final.npy", "states.npy"]
    batch = collate([data[i] for i in (5, 0, 40)])
    a, b = in_memory.lookup(batch, torch.device("cpu")), on_disk.lookup(batch, torch.device("cpu"))
    assert torch.equal(a.states, b.states) and torch.equal(a.mask, b.mask) and torch.equal(a.final, b.final)
    live = model.encode(batch.src, batch.src_mask)
    torch.testing.assert_close(a.states, live.states, rtol=1e-4, atol=1e-5)


class CountingEncoder(nn.Module):
    """Counts the rows and padded positions its inner encoder is given."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner, self.rows, self.padded, self.calls = inner, 0, 0, 0

    def forward(self, src: torch.Tensor, src_mask: torch.Tensor) -> Memory:
        self.rows, self.padded, self.calls = self.rows + src.shape[0], self.padded + src.numel(), self.calls + 1
        return self.inner(src, src_mask)


def test_build_encodes_each_row_once_shortest_first_in_budgeted_batches():
    data = reversal_data(200)
    torch.manual_seed(0)
    model = gru_seq2seq(len(data.src_vocab), len(data.tgt_vocab), emb=16, hidden=32, attention="dot").eval()
    model.encoder = CountingEncoder(model.encoder)
    cache = EncoderCache.build(Seq2SeqTask(), model, data, collate, torch.device("cpu"), build_bytes=64 << 10)
    probe = 4  # the probe: its rows are encoded twice, then again beside the longest row, and kept
    assert model.encoder.rows == len(data) + probe + (probe + 1) and len(cache) == len(data)
    real = int(data.src_lengths.sum()) + int(data.src_lengths.sort().values[:probe].sum())
    company = (probe + 1) * int(data.src_lengths.max())
    assert model.encoder.padded <= 1.05 * real + company  # length-sorted batches hardly pad
    assert model.encoder.calls > 3  # the budget splits the rows into several batches
    few = EncoderCache.build(Seq2SeqTask(), model.eval(), data, collate, torch.device("cpu"), build_bytes=1 << 30)
    assert len(few) == len(data)


def test_vectorised_lookup_equals_row_by_row_merge_and_live_encoder():
    data = reversal_data(64)
    torch.manual_seed(0)
    model = gru_seq2seq(len(data.src_vocab), len(data.tgt_vocab), emb=16, hidden=32, attention="dot").eval()
    task = Seq2SeqTask()
    cache = EncoderCache.build(task, model, data, collate, torch.device("cpu"), build_bytes=16 << 10)
    batch = collate([data[i] for i in (7, 3, 60, 0, 41)])
    fast = cache.lookup(batch, torch.device("cpu"))
    slow = task.merge_encoding(cache.rows(batch.index.tolist()), batch)
    assert torch.equal(fast.states, slow.states) and torch.equal(fast.mask, slow.mask)
    assert torch.equal(fast.final, slow.final)
    live = model.encode(batch.src, batch.src_mask)
    assert torch.equal(fast.mask, live.mask)
    torch.testing.assert_close(fast.states, live.states * live.mask[..., None], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fast.final, live.final, rtol=1e-4, atol=1e-5)


def test_lookup_of_a_row_not_in_the_cache_is_refused():
    data = reversal_data(32)
    torch.manual_seed(0)
    model = gru_seq2seq(len(data.src_vocab), len(data.tgt_vocab), emb=16, hidden=32).eval()
    cache = EncoderCache.build(Seq2SeqTask(), model, torch.utils.data.Subset(data, range(16)), collate,
                               torch.device("cpu"))
    with pytest.raises(pw.CacheRefused, match="row 20 is not in the cache"):
        cache.lookup(collate([data[3], data[20]]), torch.device("cpu"))


class UnmaskedEncoder(nn.Module):
    """Mixes every position, padding included, into each state (a self-attention without a
    key-padding mask would): a row's output depends on how far its batch pads it."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, src: torch.Tensor, src_mask: torch.Tensor) -> Memory:
        m = self.inner(src, src_mask)
        return Memory(m.states + m.states.mean(dim=1, keepdim=True), m.mask, m.final)


def test_cache_refused_for_an_encoder_whose_rows_depend_on_padding():
    data = reversal_data()

    def model() -> nn.Module:
        torch.manual_seed(0)
        m = gru_seq2seq(len(data.src_vocab), len(data.tgt_vocab), emb=16, hidden=32, attention="dot")
        m.encoder = UnmaskedEncoder(m.encoder)
        return m

    with pytest.raises(pw.ConfigError, match="depends on the other rows of its batch"):
        train(data, "on", model=model())
    with pytest.warns(RuntimeWarning, match="cache not used: the encoder's output for a row depends"):
        auto, t_auto = train(data, "auto", model=model())
    live, _ = train(data, "off", model=model())
    assert t_auto.cache is None
    for (name, a), b in zip(live.named_parameters(), auto.parameters(), strict=True):
        assert torch.equal(a, b), name  # "auto" fell back to exactly the live run


def test_cache_refused_for_rows_that_share_an_id():
    data = reversal_data(64)
    other = Seq2SeqDataset([(list("hgf"), list("FGH"))] * 8, data.src_vocab, data.tgt_vocab)
    both = torch.utils.data.ConcatDataset([data, other])  # each numbers its rows from 0

    def model() -> nn.Module:
        torch.manual_seed(0)
        return gru_seq2seq(len(data.src_vocab), len(data.tgt_vocab), emb=16, hidden=32, attention="dot")

    with pytest.raises(pw.ConfigError, match="row id 0 is given to more than one row"):
        train(both, "on", model=model())
    with pytest.warns(RuntimeWarning, match="more than one row"):
        _, trainer = train(both, "auto", model=model())
    assert trainer.cache is None and trainer.step > 0
