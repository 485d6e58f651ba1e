"""Shared fixtures for the seq2seq tests: tiny reference models, random padded batches, a
hand-written bigram model with known probabilities, and an independent sequence scorer."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator

import pytest
import torch
from torch import Tensor, nn

from partwise.seq2seq import BOS, EOS, PAD, Memory, Seq2Seq, gru_seq2seq, transformer_seq2seq

SRC_V, TGT_V = 11, 13

MODEL_KINDS = ["gru", "gru-additive-bi", "gru-dot-2layer", "gru-dot-bi", "transformer"]


def build_model(kind: str, seed: int = 0, dropout: float = 0.0) -> Seq2Seq:
    """A tiny reference model of the given kind, in eval mode."""
    torch.manual_seed(seed)
    if kind == "gru":
        model = gru_seq2seq(SRC_V, TGT_V, emb=8, hidden=12, bidirectional=False, attention=None,
                            dropout=dropout)
    elif kind == "gru-additive-bi":
        model = gru_seq2seq(SRC_V, TGT_V, emb=8, hidden=12, bidirectional=True, attention="additive",
                            dropout=dropout)
    elif kind == "gru-dot-2layer":
        model = gru_seq2seq(SRC_V, TGT_V, emb=8, hidden=12, layers=2, bidirectional=False,
                            attention="dot", dropout=dropout)
    elif kind == "gru-dot-bi":
        model = gru_seq2seq(SRC_V, TGT_V, emb=8, hidden=12, bidirectional=True, attention="dot",
                            dropout=dropout)
    elif kind == "transformer":
        model = transformer_seq2seq(SRC_V, TGT_V, d_model=16, heads=2, enc_layers=2, dec_layers=2,
                                    ff=32, dropout=dropout, max_len=32)
    else:
        raise KeyError(kind)
    return model.eval()


def random_batch(batch: int, max_src: int, seed: int = 1, vocab: int = SRC_V) -> tuple[Tensor, Tensor]:
    """Right-padded sources of lengths 1..max_src (the longest row is exactly max_src long)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, max_src + 1, (batch,), generator=g)
    lengths[0] = max_src
    mask = torch.arange(max_src)[None, :] < lengths[:, None]
    src = torch.randint(4, vocab, (batch, max_src), generator=g).masked_fill(~mask, PAD)
    return src, mask


def sequence_scores(model: nn.Module, src: Tensor, src_mask: Tensor, hyps: list[list[int]],
                    length_penalty: float, eos: list[bool] | None = None) -> list[float]:
    """sum log p(y_t) / len**length_penalty for each hypothesis, via the teacher-forced forward.

    ``eos[i]`` says whether hypothesis ``i`` ended with EOS (scored and counted in its length);
    by default every hypothesis does.
    """
    eos = [True] * len(hyps) if eos is None else eos
    targets = [h + [EOS] if e else list(h) for h, e in zip(hyps, eos, strict=True)]
    width = max(len(t) for t in targets)
    gold = torch.full((len(hyps), width), PAD, dtype=torch.long)
    for i, t in enumerate(targets):
        gold[i, : len(t)] = torch.tensor(t, dtype=torch.long)
    prev = torch.cat([torch.full((len(hyps), 1), BOS, dtype=torch.long), gold[:, :-1]], dim=1)
    with torch.no_grad():
        log_probs = torch.log_softmax(model(src, src_mask, prev).double(), dim=-1)
    picked = log_probs.gather(2, gold[:, :, None])[:, :, 0]
    return [float(picked[i, : len(t)].sum()) / len(t) ** length_penalty
            for i, t in enumerate(targets)]


class _BigramDecoder(nn.Module):
    """Next-token probabilities depend only on the previous token and on the row's mode
    (the source's first token minus 4). State: steps taken per row, to check reordering."""

    def __init__(self, tables: Tensor) -> None:
        super().__init__()
        self.register_buffer("log_tables", torch.log(tables + 1e-12))
        self.calls = 0

    def initial_state(self, memory: Memory) -> Tensor:
        return torch.zeros(memory.batch_size, dtype=torch.long)

    def _logits(self, prev: Tensor, memory: Memory) -> Tensor:
        mode = memory.states[:, 0, 0].long() - 4
        return self.log_tables[mode[:, None].expand_as(prev), prev]

    def forward(self, prev_tokens: Tensor, memory: Memory, state: Tensor | None = None) -> Tensor:
        return self._logits(prev_tokens, memory)

    def step(self, prev_token: Tensor, memory: Memory, state: Tensor) -> tuple[Tensor, Tensor]:
        self.calls += 1
        return self._logits(prev_token[:, None], memory)[:, 0], state + 1

    def reorder_state(self, state: Tensor, index: Tensor) -> Tensor:
        return state.index_select(0, index)


class BigramModel(nn.Module):
    """Duck-typed model (not a Seq2Seq) with hand-set probabilities over tokens 4, 5, 6.

    Mode 0 (source starts with 4): BOS -> 4 (0.6) | 5 (0.4); 4 -> 6 (0.4) | 5 (0.35) | EOS (0.25);
    5 -> EOS (0.9) | 6 (0.1); 6 -> EOS (1.0). So greedy gives [4, 6] (p = 0.24), while the most
    probable sequence is [5] (p = 0.36); per token (length_penalty=1), [4, 6] is best:
    ln(0.24)/3 = -0.476 > ln(0.36)/2 = -0.511.
    Mode 1 (source starts with 5): EOS at once from every token. Mode 2: never EOS (4 forever).
    Mode 3 (source starts with 7): BOS -> EOS (0.5) | 4 (0.3) | 5 (0.2); 4 -> 6 (0.9) | EOS (0.1);
    5 -> EOS; 6 -> EOS. Per token, [4, 6] (ln(0.27)/3 = -0.436) beats [] (ln(0.5)/1 = -0.693),
    although two beams hold two finished hypotheses ([] and [5]) after the second step.
    """

    def __init__(self) -> None:
        super().__init__()
        v = 7
        tables = torch.zeros(4, v, v)
        t = tables[0]
        t[:, EOS] = 1.0
        t[BOS] = 0.0
        t[BOS, 4], t[BOS, 5] = 0.6, 0.4
        t[4] = 0.0
        t[4, 6], t[4, 5], t[4, EOS] = 0.4, 0.35, 0.25
        t[5] = 0.0
        t[5, EOS], t[5, 6] = 0.9, 0.1
        tables[1, :, EOS] = 1.0
        tables[2, :, 4] = 1.0
        t = tables[3]
        t[:, EOS] = 1.0
        t[BOS] = 0.0
        t[BOS, EOS], t[BOS, 4], t[BOS, 5] = 0.5, 0.3, 0.2
        t[4] = 0.0
        t[4, 6], t[4, EOS] = 0.9, 0.1
        self.encoder = nn.Identity()
        self.decoder = _BigramDecoder(tables)

    def encode(self, src: Tensor, src_mask: Tensor) -> Memory:
        return Memory(states=src[:, :, None].float(), mask=src_mask)

    def forward(self, src: Tensor, src_mask: Tensor, prev_tokens: Tensor) -> Tensor:
        return self.decoder(prev_tokens, self.encode(src, src_mask))


@pytest.fixture(autouse=True)
def _single_thread() -> Iterator[None]:
    """Run each test on one intra-op thread, then restore the setting. The models here are tiny:
    on a busy 2-core machine two OpenMP threads made decoding ~300x slower than one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(params=MODEL_KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    """Each reference model configuration in turn."""
    return request.param


@pytest.fixture
def bigram() -> BigramModel:
    return BigramModel()


@pytest.fixture
def score() -> Callable[..., list[float]]:
    return sequence_scores


@pytest.fixture
def model_factory() -> Callable[..., Seq2Seq]:
    return build_model


@pytest.fixture
def batch_factory() -> Callable[..., tuple[Tensor, Tensor]]:
    return random_batch



def reverse_task(batch: int, max_src: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Toy task: the target is the source reversed. Returns src, src_mask, decoder inputs
    (BOS + target) and gold outputs (target + EOS), all right-padded with PAD."""
    lengths = torch.randint(1, max_src + 1, (batch,), generator=generator)
    mask = torch.arange(max_src)[None, :] < lengths[:, None]
    src = torch.randint(4, SRC_V, (batch, max_src), generator=generator).masked_fill(~mask, PAD)
    gold = torch.full((batch, max_src + 1), PAD, dtype=torch.long)
    for i, n in enumerate(lengths.tolist()):
        gold[i, :n] = src[i, :n].flip(0)
        gold[i, n] = EOS
    prev = torch.cat([torch.full((batch, 1), BOS, dtype=torch.long), gold[:, :-1]], dim=1)
    prev = prev.masked_fill(prev == EOS, PAD)
    return src, mask, prev, gold


@functools.cache
def train_on_reverse(kind: str, steps: int, seed: int = 0, lr: float = 1e-2) -> Seq2Seq:
    """A tiny reference model trained with teacher forcing on :func:`reverse_task`, in eval mode.

    Cached per argument set: callers must not modify the returned model.
    """
    model = build_model(kind, seed=seed).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        src, mask, prev, gold = reverse_task(32, 6, g)
        logits = model(src, mask, prev)
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), gold.flatten(), ignore_index=PAD)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.fixture
def trained() -> Callable[..., Seq2Seq]:
    return train_on_reverse


@pytest.fixture
def reverse_data() -> Callable[..., tuple[Tensor, Tensor, Tensor, Tensor]]:
    return reverse_task
