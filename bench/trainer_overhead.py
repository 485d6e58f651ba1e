"""Trainer overhead: partwise.Trainer vs a hand-written PyTorch loop, side by side in one run.

Same model (the reference GRU encoder–decoder with attention), same CMUdict batches (length-bucketed),
same AdamW settings, teacher forcing. Each repeat times one epoch of a fixed number of batches with
the hand loop and with the trainer, interleaved so that machine load affects both alike.
Target (product brief): trainer speed >= 0.97x the hand loop.

    .venv/bin/python bench/trainer_overhead.py [--batches 60] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

import partwise as pw
from partwise.data import BucketBatchSampler, collate, make_g2p_datasets
from partwise.seq2seq import PAD, Seq2SeqTask, gru_seq2seq


def build(vocab_sizes: tuple[int, int]) -> nn.Module:
    torch.manual_seed(0)
    return gru_seq2seq(*vocab_sizes, emb=64, hidden=128, attention="additive", dropout=0.1)


def hand_loop(model: nn.Module, loader: DataLoader) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    model.train()
    t0 = time.perf_counter()
    for batch in loader:
        memory = model.encode(batch.src, batch.src_mask)
        logits = model.decoder(batch.tgt_in, memory, model.decoder.initial_state(memory))
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), batch.tgt_out.flatten(), ignore_index=PAD)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - t0


def trainer_loop(model: nn.Module, loader: DataLoader) -> float:
    parts = pw.Parts(model)
    plan = pw.Plan([pw.Phase("all", epochs=1, train={"encoder": 1e-3, "decoder": 1e-3},
                             optimizer={"weight_decay": 0.01})])
    trainer = pw.Trainer(model, parts, plan, Seq2SeqTask(), device="cpu")
    t0 = time.perf_counter()
    trainer.fit(loader)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    data = make_g2p_datasets()
    rows = Subset(data.train, range(args.batches * args.batch_size))
    lengths = data.train.lengths[: len(rows)]
    sizes = (len(data.src_vocab), len(data.tgt_vocab))

    def loader() -> DataLoader:
        sampler = BucketBatchSampler(lengths, args.batch_size, seed=0)
        return DataLoader(rows, batch_sampler=sampler, collate_fn=collate)

    hand_loop(build(sizes), loader())  # warm up both paths (first optimizer construction imports torch._dynamo)
    trainer_loop(build(sizes), loader())
    hand, ours = [], []
    for _ in range(args.repeats):
        hand.append(hand_loop(build(sizes), loader()))
        ours.append(trainer_loop(build(sizes), loader()))
    h, t = statistics.median(hand), statistics.median(ours)
    print(f"threads={torch.get_num_threads()} batches/epoch={args.batches} batch={args.batch_size} "
          f"repeats={args.repeats}")
    print(f"hand-written loop : {h:.3f} s/epoch (median), {args.batches / h:.1f} steps/s")
    print(f"partwise.Trainer  : {t:.3f} s/epoch (median), {args.batches / t:.1f} steps/s")
    print(f"trainer speed vs hand loop: {h / t:.3f}x (target >= 0.97x)")


if __name__ == "__main__":
    main()
