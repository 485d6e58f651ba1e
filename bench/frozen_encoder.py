"""Decoder retraining on a frozen encoder: per-epoch time with and without the encoder-output cache,
and the cost of building the cache against one encoder pass.

An encoder-heavy model (a pretrained-style pre-norm Transformer encoder, d_model 256, 6 layers, as the
kept encoder; a small GRU decoder with additive attention as the new decoder, composed with ``Seq2Seq``)
retrains its decoder on CMUdict G2P training words, a fixed number of length-bucketed batches per epoch.
Side by side in one process:

  (a) plain PyTorch loop: encoder ``requires_grad=False`` and in eval mode, encoder forward every step,
      AdamW over the decoder's parameters;
  (b) ``partwise.Trainer`` with a plan that trains only ``decoder``, ``cache="off"``;
  (c) the same with ``cache="on"``: the encoder runs once over the training rows (in round 0), then
      every step looks its outputs up;
  (d) decoder-only lower bound: a hand loop over encoder outputs precomputed (untimed, inside its
      turn) for that epoch's batches, so no encoder work at all during the timed epoch;
  (e) one encoder pass: the frozen encoder's forward (no grad) over that epoch's training batches —
      what the cache build should cost;
  (f) the cache build: ``EncoderCache.build`` over the training rows, as the Trainer calls it.

Every training variant uses its own copy of the same initial weights, the same batch order
(``BucketBatchSampler``, seed 0, epoch by epoch), AdamW (lr 1e-3, weight decay 0.01 on matrices only,
as partwise groups them), fp32, no clipping, plain teacher forcing (one parallel decoder call).

Method. Each variant runs in its own thread of this one process and they take turns, one epoch (one
pass, one build) at a time, round by round in a rotated order (``bench/_interleave.py``): only one
computes at a time, and a burst of load from other programs hits them alike. One intra-op thread
(``--threads``). Round 0 is warm-up (one-time costs; the cache build inside (c)) and is not counted;
``--repeats`` timed rounds follow. Figures are medians over the timed rounds; ratios are medians of the
per-round ratios. Amortised, per round: (a) / ((c) + (f) / ``--epochs``). Targets (product brief): cached >= 3x
faster per epoch than (a) and within 1.15x of (d); build <= 1.15x (e); amortised over 5 epochs >= 2.5x.

    .venv/bin/python bench/frozen_encoder.py [--quick] [--batches 30] [--repeats 7] [--epochs 5] [--threads 1]

About 3 minutes on 2 loaded CPU cores with the defaults; ``--quick`` about 40 s.
"""

from __future__ import annotations

import argparse
import copy
import os
import resource
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

sys.path.insert(0, str(Path(__file__).parent))
from _interleave import Gate, interleave, load_line, median, paired  # noqa: E402

import partwise as pw  # noqa: E402
from partwise._train._cache import EncoderCache  # noqa: E402
from partwise.data import BucketBatchSampler, collate, make_g2p_datasets  # noqa: E402
from partwise.seq2seq import PAD, GRUDecoder, Seq2Seq, Seq2SeqTask, TransformerEncoder  # noqa: E402

VARIANTS = {
    "plain": "(a) plain loop, encoder every step",
    "trainer": "(b) Trainer, cache='off'",
    "cached": "(c) Trainer, cache='on'",
    "lower": "(d) decoder-only lower bound",
    "encode": "(e) one encoder pass (no grad)",
    "build": "(f) cache build (EncoderCache.build)",
}


def build_model(src_vocab: int, tgt_vocab: int, enc_layers: int) -> Seq2Seq:
    torch.manual_seed(0)
    encoder = TransformerEncoder(src_vocab, d_model=256, heads=4, layers=enc_layers, ff=1024, dropout=0.1, max_len=64)
    decoder = GRUDecoder(tgt_vocab, emb_dim=64, hidden=128, attention="additive", memory_dim=256, dropout=0.1)
    return Seq2Seq(encoder, decoder)


def freeze_encoder(model: Seq2Seq) -> torch.optim.AdamW:
    """What the tutorials do: no gradients for the encoder, its dropout off, AdamW over the decoder
    (decaying matrices, not biases/norms, as partwise groups them)."""
    for p in model.encoder.parameters():
        p.requires_grad_(False)
    model.train()
    model.encoder.eval()
    params = list(model.decoder.parameters())
    return torch.optim.AdamW([{"params": [p for p in params if p.ndim > 1]},
                              {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}],
                             lr=1e-3, weight_decay=0.01)


def decoder_step(model: Seq2Seq, opt: torch.optim.Optimizer, batch: Any, memory: Any) -> None:
    logits = model.decoder(batch.tgt_in, memory, model.decoder.initial_state(memory))
    loss = nn.functional.cross_entropy(logits.flatten(0, 1), batch.tgt_out.flatten(), ignore_index=PAD)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


class Setup:
    """The data, a loader per variant (same batch order) and a fresh model copy per variant."""

    def __init__(self, args: argparse.Namespace):
        rows = args.batches * args.batch_size
        data = make_g2p_datasets(limit=rows)  # >= `rows` training rows: one per pronunciation
        if len(data.train) < rows:
            raise SystemExit(f"--batches {args.batches} x --batch-size {args.batch_size} exceeds the training rows")
        self.args, self.rows = args, rows
        self.lengths = data.train.lengths[:rows]
        self.dataset = Subset(data.train, range(rows))
        self.model = build_model(len(data.src_vocab), len(data.tgt_vocab), args.enc_layers)
        self.state_bytes: dict[str, int] = {}
        self.cache_bytes = 0
        self.phase_entry: dict[str, float] = {}

    def loader(self) -> DataLoader:
        sampler = BucketBatchSampler(self.lengths, self.args.batch_size, seed=0)
        return DataLoader(self.dataset, batch_sampler=sampler, collate_fn=collate)

    def fresh(self) -> Seq2Seq:
        return copy.deepcopy(self.model)


def run_plain(s: Setup, gate: Gate, rounds: int) -> None:
    model, loader = s.fresh(), s.loader()
    opt = freeze_encoder(model)
    for epoch in range(rounds):
        gate.start()
        loader.batch_sampler.set_epoch(epoch)
        for batch in loader:
            decoder_step(model, opt, batch, model.encode(batch.src, batch.src_mask))
        gate.lap()
    s.state_bytes["plain"] = adamw_encoder_bytes(opt, model.encoder)


def run_lower(s: Setup, gate: Gate, rounds: int) -> None:
    model, loader = s.fresh(), s.loader()
    opt = freeze_encoder(model)
    for epoch in range(rounds):
        gate.start()
        loader.batch_sampler.set_epoch(epoch)
        with torch.no_grad():  # untimed: this epoch's encoder outputs, batch by batch, in its order
            memories = [model.encode(b.src, b.src_mask) for b in loader]
        gate.reset_clock()
        for batch, memory in zip(loader, memories, strict=True):
            decoder_step(model, opt, batch, memory)
        gate.lap()
        del memories


def run_encode(s: Setup, gate: Gate, rounds: int) -> None:
    model, loader = s.fresh(), s.loader()
    freeze_encoder(model)
    for epoch in range(rounds):
        gate.start()
        loader.batch_sampler.set_epoch(epoch)
        with torch.no_grad():
            for b in loader:
                model.encode(b.src, b.src_mask)
        gate.lap()


def run_build(s: Setup, gate: Gate, rounds: int) -> None:
    model = s.fresh()
    freeze_encoder(model)
    for _ in range(rounds):
        gate.start()
        cache = EncoderCache.build(Seq2SeqTask(), model, s.dataset, collate, torch.device("cpu"))
        gate.lap()
    s.cache_bytes = cache.nbytes


class _EpochGate:
    """Trainer callback: each epoch end hands the turn back (and waits for the next, but the last)."""

    def __init__(self, gate: Gate, rounds: int) -> None:
        self.gate, self.rounds, self.done, self.entry = gate, rounds, 0, 0.0

    def on_phase_start(self, trainer: pw.Trainer, span: Any) -> None:
        self.entry = self.gate.seconds_since_start()

    def on_epoch_end(self, trainer: pw.Trainer, metrics: dict[str, Any]) -> None:
        self.done += 1
        (self.gate.lap if self.done == self.rounds else self.gate.lap_and_start)()


def run_trainer(s: Setup, gate: Gate, rounds: int, cache: str) -> None:
    model = s.fresh()
    parts = pw.Parts(model)
    plan = pw.Plan([pw.Phase("decoder", epochs=rounds, train={"decoder": 1e-3}, optimizer={"weight_decay": 0.01})])
    clock = _EpochGate(gate, rounds)
    trainer = pw.Trainer(model, parts, plan, Seq2SeqTask(), device="cpu", cache=cache, callbacks=[clock])
    gate.start()
    trainer.fit(s.loader())
    name = "cached" if cache == "on" else "trainer"
    if cache == "on" and trainer.cache is None:
        raise RuntimeError("(c) did not use the cache")
    s.state_bytes[name] = pw.state_bytes(trainer.optimizer, parts)["encoder"]
    s.phase_entry[name] = clock.entry


def adamw_encoder_bytes(opt: torch.optim.Optimizer, encoder: nn.Module) -> int:
    ids = {id(p) for p in encoder.parameters()}
    return sum(v.numel() * v.element_size() for p, st in opt.state.items() if id(p) in ids
               for v in st.values() if isinstance(v, torch.Tensor))


def report(t: dict[str, list[float]], s: Setup, args: argparse.Namespace, load_before: float) -> None:
    n_enc = sum(p.numel() for p in s.model.encoder.parameters())
    n_dec = sum(p.numel() for p in s.model.decoder.parameters())
    med = {v: median(x) for v, x in t.items()}
    print(f"frozen_encoder: threads={args.threads} rows={s.rows} ({args.batches} batches of {args.batch_size}) "
          f"timed rounds={args.repeats} (+1 warm-up), {load_line(load_before)}")
    print(f"encoder: Transformer {args.enc_layers}x256, {n_enc:,} params (frozen); decoder: GRU 128 + additive "
          f"attention, {n_dec:,} params; one process, variants alternated epoch by epoch")
    for v, label in VARIANTS.items():
        print(f"{label:<38}: {med[v]:.3f} s (min {min(t[v]):.3f}, max {max(t[v]):.3f})")
    amortised = [c + b / args.epochs for c, b in zip(t["cached"], t["build"], strict=True)]  # per round
    print(f"optimizer state of the frozen encoder: plain {s.state_bytes['plain']} B, Trainer "
          f"{s.state_bytes['trainer']} B / {s.state_bytes['cached']} B; cache holds {s.cache_bytes / 2**20:.2f} MiB; "
          f"process peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB (all variants)")
    print(f"(c)'s phase entry in round 0 (freeze, optimizer, cache build inside the Trainer): "
          f"{s.phase_entry['cached']:.3f} s; with cache='off': {s.phase_entry['trainer']:.3f} s")
    print(f"cache build / one encoder pass (target <= 1.15x): {paired(t['build'], t['encode']):.2f}x")
    print(f"cache speed-up vs plain loop per epoch (target >= 3x): {paired(t['plain'], t['cached']):.2f}x")
    print(f"cache speed-up with the build amortised over {args.epochs} epochs (target >= 2.5x): "
          f"{paired(t['plain'], amortised):.2f}x  [median over rounds of (a) / ((c) + (f)/{args.epochs}); medians: "
          f"{med['plain']:.3f} / ({med['cached']:.3f} + {med['build']:.3f}/{args.epochs})]")
    print(f"ceiling for any cache, (a) / (d): {paired(t['plain'], t['lower']):.2f}x")
    print(f"cache / decoder-only lower bound (target <= 1.15x): {paired(t['cached'], t['lower']):.3f}x")
    print(f"Trainer cache='off' speed vs plain loop (target >= 0.97x): {paired(t['plain'], t['trainer']):.3f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="10 batches, 3 timed rounds, 4 encoder layers")
    ap.add_argument("--batches", type=int, default=30, help="batches per epoch")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=7, help="timed rounds, after one warm-up round")
    ap.add_argument("--epochs", type=int, default=5, help="epochs a run would train: the build is amortised over these")
    ap.add_argument("--enc-layers", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads")
    args = ap.parse_args()
    if args.quick:
        args.batches, args.repeats, args.enc_layers = 10, 3, 4
    for name in ("batches", "batch_size", "repeats", "epochs", "enc_layers", "threads"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} {getattr(args, name)}: must be >= 1")
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    s = Setup(args)
    rounds = 1 + args.repeats
    variants = {
        "plain": lambda g: run_plain(s, g, rounds),
        "trainer": lambda g: run_trainer(s, g, rounds, "off"),
        "cached": lambda g: run_trainer(s, g, rounds, "on"),
        "lower": lambda g: run_lower(s, g, rounds),
        "encode": lambda g: run_encode(s, g, rounds),
        "build": lambda g: run_build(s, g, rounds),
    }
    times = interleave(variants, rounds, threads=args.threads)
    report({v: x[1:] for v, x in times.items()}, s, args, load_before)


if __name__ == "__main__":
    main()
