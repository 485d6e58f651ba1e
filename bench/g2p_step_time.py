"""G2P training-step time of GRU variants, with 1 and 2 torch threads, side by side in one run.

For each model variant, the same length-bucketed CMUdict batches are trained (forward, backward,
AdamW step) with ``torch.set_num_threads(1)`` and ``(2)`` in alternation, round by round, so machine
load affects both alike. Prints milliseconds per step (median over rounds), the projected seconds per
epoch of the 114k training rows at batch 128, and the 2-thread speed-up. Used to size the G2P recipe
to its time budget (recipes/README.md).

    .venv/bin/python bench/g2p_step_time.py [--steps 20] [--rounds 3] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch
from torch import nn

from partwise.data import BucketBatchSampler, collate, make_g2p_datasets
from partwise.seq2seq import PAD, gru_seq2seq

VARIANTS: dict[str, dict[str, Any]] = {
    "hidden 256 (recipe before)": dict(hidden=256),
    "hidden 256, input feeding": dict(hidden=256, input_feeding=True),
    "hidden 256, 2-layer encoder": dict(hidden=256, enc_layers=2),
    "hidden 384": dict(hidden=384),
}


def time_steps(model: nn.Module, batches: list[Any], threads: int) -> float:
    torch.set_num_threads(threads)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    t0 = time.perf_counter()
    for b in batches:
        memory = model.encode(b.src, b.src_mask)
        logits = model.decoder(b.tgt_in, memory, model.decoder.initial_state(memory))
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), b.tgt_out.flatten(), ignore_index=PAD)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (time.perf_counter() - t0) / len(batches)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20, help="timed steps per round and thread count")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="5 steps, 1 round (a smoke test)")
    args = ap.parse_args()
    steps, rounds = (5, 1) if args.quick else (args.steps, args.rounds)
    data = make_g2p_datasets()
    sampler = BucketBatchSampler(data.train.lengths, 128, shuffle=True, seed=0)
    batches = [collate([data.train[i] for i in idx]) for idx in sampler.batches(0)[: steps + 2]]
    per_epoch = len(sampler)
    for name, kw in VARIANTS.items():
        torch.manual_seed(0)
        model = gru_seq2seq(len(data.src_vocab), len(data.tgt_vocab), emb=128, bidirectional=True,
                            attention="additive", dropout=0.2, **kw)
        time_steps(model, batches[:2], 1)  # warm-up
        times: dict[int, list[float]] = {1: [], 2: []}
        for _ in range(rounds):
            for threads in (1, 2):
                times[threads].append(time_steps(model, batches[2:], threads))
        one, two = statistics.median(times[1]), statistics.median(times[2])
        params = sum(p.numel() for p in model.parameters()) / 1e6
        print(f"{name:<28} {params:4.2f}M params: 1 thread {one * 1e3:5.0f} ms/step (~{one * per_epoch:4.0f} s/epoch), "
              f"2 threads {two * 1e3:5.0f} ms/step (~{two * per_epoch:4.0f} s/epoch): {one / two:.2f}x")


if __name__ == "__main__":
    main()
