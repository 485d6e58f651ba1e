"""Decoder retraining on a frozen encoder: per-epoch time with and without the encoder-output cache.

An encoder-heavy model (a pretrained-style pre-norm Transformer encoder, d_model 256, 6 layers, as the
kept encoder; a small GRU decoder with additive attention as the new decoder, composed with ``Seq2Seq``)
retrains its decoder on CMUdict G2P training words, a fixed number of length-bucketed batches per epoch.
Side by side in one run:

  (a) plain PyTorch loop: encoder ``requires_grad=False`` and in eval mode, encoder forward every step,
      AdamW over the decoder's parameters;
  (b) ``partwise.Trainer`` with a plan that trains only ``decoder``, ``cache="off"``;
  (c) the same with ``cache="on"``: the encoder runs once over the training rows (the build, reported
      separately), then every step looks its outputs up;
  (d) decoder-only lower bound: a hand loop over encoder outputs precomputed (untimed) for that epoch's
      batches and held in memory, so no encoder work at all during the timed epoch.

Every variant uses the same initial weights, batch order (``BucketBatchSampler``, seed 0), AdamW settings
(lr 1e-3, weight decay 0.01 on matrices only, as partwise groups them), fp32, no clipping, plain teacher
forcing (one parallel decoder call).

Method. Each variant lives in its own fresh subprocess for the whole run, so its peak memory is its own
``ru_maxrss`` (peak resident set of the whole process: Python, torch, data, model, cache; "+N" is the rise
over the peak before training). The parent runs the variants one epoch at a time, round by round in a
rotated order, each worker idle (blocked on a pipe) while another trains: a burst of load from other
programs then hits all four alike. Round 0 is warm-up (one-time costs; the cache build for (c)) and is
not counted; ``--repeats`` timed rounds follow. Per-epoch figures are medians over the timed rounds;
ratios are medians of the per-round ratios (variants of one round ran back to back). For the Trainer,
epochs are timed by ``on_epoch_end`` callbacks, and the cache build is the phase entry with
``cache="on"`` (freeze, optimizer, cache build) timed by ``on_phase_start``; it is shown once and also
amortised: steady s/epoch + build / ``--epochs``. Targets (product brief): cached >= 3x faster per epoch
than (a), and within 1.15x of (d).

    .venv/bin/python bench/frozen_encoder.py [--batches 30] [--repeats 7] [--epochs 5] [--threads 0]

About 1.5 minutes on 2 CPU cores with the defaults (much longer with 2 threads while other programs load the cores).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import IO, Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

import partwise as pw
from partwise.data import BucketBatchSampler, collate, make_g2p_datasets
from partwise.seq2seq import PAD, GRUDecoder, Seq2Seq, Seq2SeqTask, TransformerEncoder

VARIANTS = {
    "plain": "(a) plain loop, encoder every step",
    "trainer": "(b) Trainer, cache='off'",
    "cached": "(c) Trainer, cache='on'",
    "lower": "(d) decoder-only lower bound",
}


# -- worker side: one variant per process, one epoch per "go" from the parent ---------------------
def send(message: dict[str, Any]) -> None:
    print(json.dumps(message), flush=True)


def wait_for_go() -> None:
    line = sys.stdin.readline().strip()
    if line != "go":
        raise SystemExit(f"worker: expected 'go' from the parent, got {line!r}")


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
    torch.manual_seed(0)  # as Trainer.fit(seed=0) does: the same dropout stream
    return torch.optim.AdamW([{"params": [p for p in params if p.ndim > 1]},
                              {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}],
                             lr=1e-3, weight_decay=0.01)


def adamw_state_bytes(opt: torch.optim.Optimizer, encoder: nn.Module) -> dict[str, int]:
    """Bytes of tensors in the optimizer's state, in total and for the encoder's parameters."""
    enc_ids = {id(p) for p in encoder.parameters()}
    total = enc = 0
    for p, st in opt.state.items():
        n = sum(v.numel() * v.element_size() for v in st.values() if isinstance(v, torch.Tensor))
        total, enc = total + n, enc + (n if id(p) in enc_ids else 0)
    return {"state_total": total, "state_encoder": enc}


def decoder_step(model: Seq2Seq, opt: torch.optim.Optimizer, batch: Any, memory: Any) -> None:
    logits = model.decoder(batch.tgt_in, memory, model.decoder.initial_state(memory))
    loss = nn.functional.cross_entropy(logits.flatten(0, 1), batch.tgt_out.flatten(), ignore_index=PAD)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def run_plain(model: Seq2Seq, loader: DataLoader, epochs: int) -> dict[str, Any]:
    opt = freeze_encoder(model)
    for epoch in range(epochs):
        wait_for_go()
        loader.batch_sampler.set_epoch(epoch)
        t0 = time.perf_counter()
        for batch in loader:
            decoder_step(model, opt, batch, model.encode(batch.src, batch.src_mask))
        send({"seconds": time.perf_counter() - t0})
    return adamw_state_bytes(opt, model.encoder)


def run_lower(model: Seq2Seq, loader: DataLoader, epochs: int) -> dict[str, Any]:
    opt = freeze_encoder(model)
    for epoch in range(epochs):
        wait_for_go()
        loader.batch_sampler.set_epoch(epoch)
        with torch.no_grad():  # untimed: this epoch's encoder outputs, batch by batch, in its order
            memories = [model.encode(b.src, b.src_mask) for b in loader]
        loader.batch_sampler.set_epoch(epoch)
        t0 = time.perf_counter()
        for batch, memory in zip(loader, memories, strict=True):
            decoder_step(model, opt, batch, memory)
        send({"seconds": time.perf_counter() - t0})
        del memories
    return adamw_state_bytes(opt, model.encoder)


class _EpochGate:
    """Trainer callback: reports each epoch's seconds, then waits for the parent's next "go"."""

    def __init__(self, epochs: int) -> None:
        self.epochs, self.done = epochs, 0
        self.go = time.perf_counter()
        self.phase_entry = 0.0

    def on_phase_start(self, trainer: pw.Trainer, span: Any) -> None:
        self.phase_entry = time.perf_counter() - self.go

    def on_epoch_end(self, trainer: pw.Trainer, metrics: dict[str, Any]) -> None:
        send({"seconds": time.perf_counter() - self.go})
        self.done += 1
        if self.done < self.epochs:
            wait_for_go()
            self.go = time.perf_counter()


def run_trainer(model: Seq2Seq, loader: DataLoader, epochs: int, cache: str) -> dict[str, Any]:
    parts = pw.Parts(model)
    plan = pw.Plan([pw.Phase("decoder", epochs=epochs, train={"decoder": 1e-3}, optimizer={"weight_decay": 0.01})])
    gate = _EpochGate(epochs)
    trainer = pw.Trainer(model, parts, plan, Seq2SeqTask(), device="cpu", cache=cache, callbacks=[gate])
    wait_for_go()
    gate.go = time.perf_counter()
    trainer.fit(loader)
    state = pw.state_bytes(trainer.optimizer, parts)
    return {"state_total": sum(state.values()), "state_encoder": state["encoder"], "phase_entry": gate.phase_entry,
            "cache_bytes": trainer.cache.nbytes if trainer.cache is not None else 0,
            "cache_used": trainer.cache is not None}


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def worker(variant: str, args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = args.batches * args.batch_size
    data = make_g2p_datasets(limit=rows)  # >= `rows` training rows: one per pronunciation
    if len(data.train) < rows:
        raise SystemExit(f"--batches {args.batches} x --batch-size {args.batch_size} exceeds the training rows")
    model = build_model(len(data.src_vocab), len(data.tgt_vocab), args.enc_layers)
    sampler = BucketBatchSampler(data.train.lengths[:rows], args.batch_size, seed=0)
    loader = DataLoader(Subset(data.train, range(rows)), batch_sampler=sampler, collate_fn=collate)
    warm = nn.Linear(2, 2)  # pay one-time costs (the first optimizer step imports torch._dynamo) before timing
    opt = torch.optim.AdamW(warm.parameters())
    warm(torch.ones(1, 2)).sum().backward()
    opt.step()
    setup = peak_rss_mib()
    send({"ready": True})
    epochs = 1 + args.repeats
    if variant == "plain":
        out = run_plain(model, loader, epochs)
    elif variant == "lower":
        out = run_lower(model, loader, epochs)
    else:
        out = run_trainer(model, loader, epochs, "off" if variant == "trainer" else "on")
    params = [sum(p.numel() for p in m.parameters()) for m in (model.encoder, model.decoder)]
    send({"final": {**out, "rss_setup": setup, "rss_peak": peak_rss_mib(), "params": params}})


# -- parent side ---------------------------------------------------------------------------------
def expect(name: str, proc: subprocess.Popen[str], key: str) -> Any:
    """The next message from worker ``name`` that carries ``key``."""
    stdout: IO[str] = proc.stdout  # type: ignore[assignment]
    while True:
        line = stdout.readline()
        if not line:
            raise RuntimeError(f"worker {name!r} exited (code {proc.wait()}) before sending {key!r}; see its stderr")
        try:
            message = json.loads(line)
        except json.JSONDecodeError:
            continue  # a stray print from a library
        if isinstance(message, dict) and key in message:
            return message[key]


def measure(args: argparse.Namespace) -> tuple[dict[str, list[float]], dict[str, dict[str, Any]]]:
    """Epoch seconds per variant (round 0 first) and each worker's final report."""
    names = list(VARIANTS)
    flags = ["--batches", str(args.batches), "--batch-size", str(args.batch_size), "--repeats", str(args.repeats),
             "--enc-layers", str(args.enc_layers), "--threads", str(args.threads)]
    procs = {v: subprocess.Popen([sys.executable, __file__, "--worker", v, *flags], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True) for v in names}
    try:
        for v in names:
            expect(v, procs[v], "ready")
        seconds: dict[str, list[float]] = {v: [] for v in names}
        for r in range(1 + args.repeats):  # rotated order: no variant always runs right after another
            print(f"round {r}/{args.repeats}{' (warm-up)' if r == 0 else ''}", file=sys.stderr, flush=True)
            for v in names[r % len(names):] + names[: r % len(names)]:
                procs[v].stdin.write("go\n")  # type: ignore[union-attr]
                procs[v].stdin.flush()  # type: ignore[union-attr]
                seconds[v].append(expect(v, procs[v], "seconds"))
        finals = {v: expect(v, procs[v], "final") for v in names}
    finally:
        for p in procs.values():
            if p.poll() is None and p.stdin is not None:
                p.stdin.close()
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
    return seconds, finals


def mib(n: float) -> str:
    return f"{n / 2**20:.2f} MiB" if n else "0 B"


def paired(a: list[float], b: list[float]) -> float:
    """Median over rounds of a[r] / b[r]."""
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def report(seconds: dict[str, list[float]], finals: dict[str, dict[str, Any]], args: argparse.Namespace,
           load_before: float) -> None:
    timed = {v: s[1:] for v, s in seconds.items()}
    med = {v: statistics.median(s) for v, s in timed.items()}
    n_enc, n_dec = finals["plain"]["params"]
    print(f"threads={args.threads or torch.get_num_threads()} batches/epoch={args.batches} batch={args.batch_size} "
          f"timed rounds={args.repeats} (+1 warm-up) load average {load_before:.1f} -> {os.getloadavg()[0]:.1f}")
    print(f"encoder: Transformer {args.enc_layers}x256, {n_enc:,} params (frozen); "
          f"decoder: GRU 128 + additive attention, {n_dec:,} params")
    if not finals["cached"]["cache_used"]:
        print("WARNING: (c) did not use the cache")
    for v, label in VARIANTS.items():
        f = finals[v]
        print(f"{label:<36}: {med[v]:.3f} s/epoch (min {min(timed[v]):.3f}, max {max(timed[v]):.3f}) | "
              f"peak RSS {f['rss_peak']:.0f} MiB (+{f['rss_peak'] - f['rss_setup']:.0f} in training) | "
              f"optimizer state {mib(f['state_total'])}, encoder {mib(f['state_encoder'])}")
    build = finals["cached"]["phase_entry"]
    amortised = med["cached"] + build / args.epochs
    print(f"(c) cache build, once: {build:.3f} s (phase entry; {finals['trainer']['phase_entry']:.3f} s with "
          f"cache='off'), {mib(finals['cached']['cache_bytes'])} held; (c) amortised over {args.epochs} epochs "
          f"= {med['cached']:.3f} + {build:.3f}/{args.epochs} = {amortised:.3f} s/epoch")
    print(f"cache speed-up vs plain loop (target >= 3x): {paired(timed['plain'], timed['cached']):.2f}x per epoch; "
          f"{med['plain'] / amortised:.2f}x with the build amortised over {args.epochs} epochs")
    print(f"cache / decoder-only lower bound (target <= 1.15x): {paired(timed['cached'], timed['lower']):.3f}x")
    print(f"Trainer cache='off' speed vs plain loop: {paired(timed['plain'], timed['trainer']):.3f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=30, help="batches per epoch")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=7, help="timed epochs per variant (rounds), after one warm-up")
    ap.add_argument("--epochs", type=int, default=5, help="epochs a run would train: the cache build is amortised "
                    "over these")
    ap.add_argument("--enc-layers", type=int, default=6)
    ap.add_argument("--threads", type=int, default=0, help="torch threads per worker (0: torch's default); "
                    "1 gives steadier figures when other programs share the cores")
    ap.add_argument("--worker", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    args = ap.parse_args()
    for name in ("batches", "batch_size", "repeats", "epochs", "enc_layers", "threads"):
        if getattr(args, name) < (0 if name == "threads" else 1):
            ap.error(f"--{name.replace('_', '-')} {getattr(args, name)}: must be >= {0 if name == 'threads' else 1}")
    if args.worker:
        worker(args.worker, args)
        return
    load_before, cores = os.getloadavg()[0], os.cpu_count() or 1
    if load_before > 0.5 and args.threads != 1:
        print(f"note: load average {load_before:.1f} on {cores} cores before starting; other programs distort "
              "multi-threaded timings badly, --threads 1 gives steadier figures", file=sys.stderr)
    seconds, finals = measure(args)
    report(seconds, finals, args, load_before)


if __name__ == "__main__":
    main()
