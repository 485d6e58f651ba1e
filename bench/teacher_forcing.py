"""Benchmark: cost of one training step under teacher forcing / scheduled sampling.

Side by side in one run, on the reference GRU-with-attention and Transformer models at G2P-like
sizes, the time per training step (encode + decode + loss + backward + Adam step) of

  (a) the PyTorch tutorial's per-token loop: teacher forcing through ``decoder.step`` at every position,
  (b) the parallel teacher-forced step (``TeacherForcing(1.0)``: one ``decoder(tgt_in, ...)`` call),
  (c) two-pass scheduled sampling at p=0.5 (Mihaylova & Martins 2019),
  (d) exact per-token scheduled sampling at p=0.5 (stepwise).

Steps are timed one at a time, round-robin over the methods, so changing machine load hits them
alike; each figure is the median (and the minimum) over the timed steps, after warmup steps.
``torch``'s thread count is left at its default. Targets (product brief): parallel >= 3x faster
than (a); two-pass <= 2.2x the cost of (b). Models are the reference factories' defaults
(``gru_seq2seq``: bidirectional GRU 256 + additive attention; ``transformer_seq2seq``: d_model 256,
3 + 3 layers), dropout 0.1, train mode.

Run: ``python bench/teacher_forcing.py`` (about a minute on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from partwise._teacher_forcing import TeacherForcing
from partwise.seq2seq import (
    BOS,
    EOS,
    PAD,
    Memory,
    Seq2Seq,
    beam_search,
    greedy_decode,
    gru_seq2seq,
    transformer_seq2seq,
)

SRC_VOCAB, TGT_VOCAB = 40, 75  # graphemes / stressed ARPAbet phonemes plus specials, as in CMUdict G2P


def make_batch(batch: int, max_len: int, seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Right-padded random source/target batch with lengths in [max_len/2, max_len]."""
    g = torch.Generator().manual_seed(seed)

    def padded(vocab: int, lengths: Tensor, first: int | None) -> Tensor:
        tokens = torch.randint(4, vocab, (batch, max_len + 1), generator=g)
        positions = torch.arange(max_len + 1)
        if first is not None:
            tokens[:, 0] = first
        tokens[positions == lengths[:, None]] = EOS
        tokens[positions > lengths[:, None]] = PAD
        return tokens

    src_len = torch.randint(max_len // 2, max_len, (batch,), generator=g)
    src = padded(SRC_VOCAB, src_len, None)[:, :max_len]
    src_mask = torch.arange(max_len) <= src_len[:, None]
    tgt = padded(TGT_VOCAB, torch.randint(max_len // 2, max_len, (batch,), generator=g) + 1, BOS)
    return src, src_mask, tgt[:, :-1], tgt[:, 1:]


def tutorial_loop(decoder: nn.Module, memory: Memory, tgt_in: Tensor) -> Tensor:
    """The tutorial's teacher forcing: one ``step`` call per position, feeding the gold token."""
    state, outputs = decoder.initial_state(memory), []
    for t in range(tgt_in.shape[1]):
        logits, state = decoder.step(tgt_in[:, t], memory, state)
        outputs.append(logits)
    return torch.stack(outputs, dim=1)


Decode = Callable[[nn.Module, Memory, Tensor, int], Tensor]


def methods() -> dict[str, Decode]:
    parallel, two_pass = TeacherForcing(1.0), TeacherForcing(0.5, per="token", mode="two_pass")
    exact = TeacherForcing(0.5, per="token", mode="exact")
    return {
        "(a) per-token loop, teacher-forced": lambda d, m, x, i: tutorial_loop(d, m, x),
        "(b) parallel teacher-forced": lambda d, m, x, i: parallel(d, m, x, step=i),
        "(c) two-pass scheduled sampling p=0.5": lambda d, m, x, i: two_pass(d, m, x, step=i),
        "(d) exact per-token sampling p=0.5": lambda d, m, x, i: exact(d, m, x, step=i),
    }


def make_step(model: Seq2Seq, decode: Decode, batch: tuple[Tensor, ...]) -> Callable[[int], None]:
    src, src_mask, tgt_in, tgt_out = batch
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss_fn = nn.CrossEntropyLoss(ignore_index=PAD)

    def train_step(i: int) -> None:
        optimizer.zero_grad(set_to_none=True)
        logits = decode(model.decoder, model.encode(src, src_mask), tgt_in, i)
        loss_fn(logits.reshape(-1, logits.shape[-1]), tgt_out.reshape(-1)).backward()
        optimizer.step()

    return train_step


def bench_model(name: str, model: Seq2Seq, batch: tuple[Tensor, ...], warmup: int,
                repeats: int) -> dict[str, float]:
    """Median seconds per training step of each method on ``model``; prints one line per method."""
    model.train()
    steps = {label: make_step(model, decode, batch) for label, decode in methods().items()}
    for train_step in steps.values():
        for i in range(warmup):
            train_step(i)
    times: dict[str, list[float]] = {label: [] for label in steps}
    for i in range(repeats):
        for label, train_step in steps.items():
            start = time.perf_counter()
            train_step(warmup + i)
            times[label].append(time.perf_counter() - start)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    for label, ts in times.items():
        print(f"{name:<12} {params:4.2f}M params  {label:<38} median {statistics.median(ts) * 1e3:7.1f} "
              f"ms/step (min {min(ts) * 1e3:7.1f})", flush=True)
    return {label: statistics.median(ts) for label, ts in times.items()}


def decoding_throughput(name: str, model: Seq2Seq, src: Tensor, src_mask: Tensor, repeats: int) -> None:
    """Words per second of batched greedy decoding and beam search (beam 5), median of ``repeats``."""
    model.eval()
    for label, run in (("greedy", lambda: greedy_decode(model, src, src_mask, max_len=20)),
                       ("beam 5", lambda: beam_search(model, src, src_mask, beam_size=5, max_len=20))):
        run()  # warmup
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            run()
            ts.append(time.perf_counter() - t0)
        print(f"{name:<12} decoding {label:<7} {src.shape[0] / statistics.median(ts):8.0f} words/s "
              f"(batch {src.shape[0]}, max 20 steps, untrained weights, so rows stop at EOS or the limit)")
    model.train()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--length", type=int, default=10, help="max source/target length")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per method")
    parser.add_argument("--repeats", type=int, default=11, help="timed steps per method")
    args = parser.parse_args()
    torch.manual_seed(0)
    batch = make_batch(args.batch, args.length)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
          f"lengths <= {args.length}, vocab {SRC_VOCAB}/{TGT_VOCAB}, {args.repeats} timed steps per "
          f"method after {args.warmup} warmup steps")
    models = {
        "gru+attn": gru_seq2seq(SRC_VOCAB, TGT_VOCAB),
        "transformer": transformer_seq2seq(SRC_VOCAB, TGT_VOCAB),
    }
    labels = list(methods())
    for name, model in models.items():
        t = bench_model(name, model, batch, args.warmup, args.repeats)
        loop, parallel, two_pass, exact = (t[label] for label in labels)
        print(f"{name:<12} parallel speed-up vs per-token loop (target >= 3x): {loop / parallel:.2f}x")
        print(f"{name:<12} two-pass cost / teacher-forced (target <= 2.2x): {two_pass / parallel:.2f}x")
        print(f"{name:<12} exact per-token p=0.5 cost / teacher-forced: {exact / parallel:.2f}x")
        decoding_throughput(name, model, batch[0], batch[1], repeats=3)


if __name__ == "__main__":
    main()
