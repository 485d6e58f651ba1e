"""Benchmark: cost of one training step under teacher forcing / scheduled sampling.

Side by side in one run, on the reference GRU-with-attention and Transformer models at G2P-like
sizes, the time per training step (encode + decode + loss + backward + Adam step) of

  (a) the PyTorch tutorial's per-token loop: teacher forcing through ``decoder.step`` at every position,
  (b) the parallel teacher-forced step (``TeacherForcing(1.0)``: one ``decoder(tgt_in, ...)`` call),
  (c) two-pass scheduled sampling at p=0.5 (Mihaylova & Martins 2019),
  (d) exact per-token scheduled sampling at p=0.5 (stepwise).

The sweep runs every method at each maximum length ``--lengths`` (default 8, 32, 128; G2P targets
are about 8 phonemes), source and target lengths drawn in [L/2, L], batches of ``--tokens // L`` rows
(the same work per step at every length, as token-sized batches give). Steps are timed one at a time,
round-robin over the methods in one process, so changing machine load hits them alike; each figure is
the median (and the minimum) over the timed steps, after warmup steps; one intra-op thread
(``--threads``). Targets (product brief): parallel >= 3x faster than (a) at length >= 32 for the
Transformer on a CPU (the GRU and short lengths are reported as they come: at G2P lengths on a CPU
both spend their time in the same matrix multiplies); two-pass <= 2.2x the cost of (b). Models are
the reference factories' defaults (``gru_seq2seq``: bidirectional GRU 256 + additive attention;
``transformer_seq2seq``: d_model 256, 3 + 3 layers), dropout 0.1, train mode. Decoding throughput is
measured by ``bench/decoding.py``.

Run: ``python bench/teacher_forcing.py [--quick]`` (about 3 minutes on 2 loaded CPU cores; 40 s quick).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from partwise.seq2seq import (
    BOS,
    EOS,
    PAD,
    Memory,
    Seq2Seq,
    TeacherForcing,
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


def sweep(lengths: list[int], args: argparse.Namespace) -> dict[tuple[str, int], dict[str, float]]:
    """Median step times of every method, per model and target length (a fresh model per length)."""
    out = {}
    for length in lengths:
        batch = make_batch(max(1, args.tokens // length), length)
        for name, factory in MODELS.items():
            torch.manual_seed(0)
            out[name, length] = bench_model(f"{name} L={length}", factory(SRC_VOCAB, TGT_VOCAB), batch, args.warmup,
                                            args.repeats)
    return out


def summary(results: dict[tuple[str, int], dict[str, float]], lengths: list[int]) -> None:
    """One line per model and length: the ratios the targets are about."""
    loop, parallel, two_pass, exact = methods()
    print("\nsummary (median step times, ratios of medians):")
    for name in MODELS:
        for length in lengths:
            t = results[name, length]
            target = " (target >= 3x at length >= 32)" if name == "transformer" and length >= 32 else ""
            print(f"{name:<12} length {length:>4}: parallel vs per-token loop {t[loop] / t[parallel]:6.2f}x{target}; "
                  f"two-pass / teacher-forced {t[two_pass] / t[parallel]:.2f}x (target <= 2.2x); "
                  f"exact p=0.5 / teacher-forced {t[exact] / t[parallel]:.2f}x")


MODELS = {"gru+attn": gru_seq2seq, "transformer": transformer_seq2seq}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="lengths 8 and 32, 3 timed steps")
    parser.add_argument("--tokens", type=int, default=1024, help="target tokens per batch: batch = tokens // length")
    parser.add_argument("--lengths", default="8,32,128", help="max source/target lengths to sweep, comma-separated")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per method")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per method")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads")
    args = parser.parse_args()
    if args.quick:
        args.lengths, args.repeats = "8,32", 3
    lengths = [int(x) for x in args.lengths.split(",")]
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    print(f"torch {torch.__version__}, CPU, {torch.get_num_threads()} threads, batches of {args.tokens} // L rows, "
          f"lengths {lengths} (source and target lengths drawn in [L/2, L]), vocab {SRC_VOCAB}/{TGT_VOCAB}, "
          f"{args.repeats} timed steps per method after {args.warmup} warmup, methods alternated step by step; "
          f"load average {load:.2f}")
    results = sweep(lengths, args)
    summary(results, lengths)
    print(f"load average {load:.2f} -> {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
