"""DDP against FSDP2 with a frozen encoder, then after the encoder unfreezes: per-rank memory of
parameters, gradients and optimizer state, and step time.

A Transformer encoder-decoder (``transformer_seq2seq``: d_model 256, 6 encoder layers, 2 decoder
layers, ff 1024, dropout 0) trains by a two-phase plan: ``decoder`` (encoder frozen, decoder AdamW
1e-3) for ``--steps`` optimizer steps, then ``all`` (encoder unfrozen at 1e-5) for ``--steps`` more,
on synthetic reversal pairs (length 12-24 tokens; a systems figure: what is measured does not depend
on the words). Both variants are ``partwise.Trainer`` runs in the same two processes (torchrun, gloo
on CPU, NCCL on a GPU), global batch ``--batch``; ``distributed="ddp"`` wraps the loss module in DDP,
``"fsdp2"`` shards the model part by part (each encoder layer a unit of its own).

Memory is counted, not sampled: the bytes of this rank's parameter tensors (its shards under FSDP2),
of the gradients present when the optimizer steps (an optimizer step pre-hook) and of the optimizer
state after the step, per part, at the last step of each phase. Step time: the wall time between
step ends, median over a phase's steps after its first two; the variants take turns, run by run,
for ``--repeats`` rounds in alternating order, and the ratio is the median of the per-round ratios.
Encoder-output caching is off (``cache="off"``) so both variants run the same forward.

    .venv/bin/python bench/fsdp_frozen.py [--steps 8] [--batch 32] [--repeats 3]

It starts torchrun with 2 ranks itself. About 2 minutes on 2 CPU cores with the defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

import partwise as pw
from partwise.data import Seq2SeqDataset, Vocab, collate
from partwise.seq2seq import Seq2SeqTask, transformer_seq2seq


def data(n: int) -> Seq2SeqDataset:
    g = torch.Generator().manual_seed(0)
    letters = [chr(ord("a") + i) for i in range(26)]
    pairs = []
    for _ in range(n):
        word = [letters[i] for i in torch.randint(0, 26, (int(torch.randint(12, 25, (1,), generator=g)),),
                                                  generator=g).tolist()]
        pairs.append((word, list(reversed(word))))
    vocab = Vocab.build([letters])
    return Seq2SeqDataset(pairs, vocab, vocab)


def nbytes(tensors: Any) -> int:
    return sum(pw_local(t).numel() * t.element_size() for t in tensors)


def pw_local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


class Meter:
    """Step ends (wall time) and, at each step, the bytes of gradients and optimizer state per part."""

    def __init__(self) -> None:
        self.ends: list[tuple[str, float]] = []
        self.memory: dict[str, dict[str, dict[str, int]]] = {}
        self._hooked: set[int] = set()

    def on_phase_start(self, trainer: pw.Trainer, span: pw.PhaseSpan) -> None:
        optimizer = trainer.optimizer
        for o in getattr(optimizer, "optimizers", {"": optimizer}).values():
            if id(o) not in self._hooked:
                self._hooked.add(id(o))
                o.register_step_pre_hook(lambda opt, *_: self._grads(trainer))
                o.register_step_post_hook(lambda opt, *_: self._state(trainer))

    def _row(self, trainer: pw.Trainer) -> dict[str, dict[str, int]]:
        name = trainer.span.phase.name if trainer.span else "?"
        return self.memory.setdefault(name, {})

    def _grads(self, trainer: pw.Trainer) -> None:
        row = self._row(trainer)
        for part in trainer.parts:
            row.setdefault(part.name, {})["params"] = nbytes(part.parameters())
            row[part.name]["grads"] = nbytes(p.grad for p in part.parameters() if p.grad is not None)

    def _state(self, trainer: pw.Trainer) -> None:
        row = self._row(trainer)
        optimizer = trainer.optimizer
        for part in trainer.parts:
            ids = {id(p) for p in part.parameters()}
            total = 0
            for o in getattr(optimizer, "optimizers", {"": optimizer}).values():
                for p, st in o.state.items():
                    if id(p) in ids:
                        total += nbytes(v for v in st.values() if isinstance(v, torch.Tensor) and v.dim() > 0)
            row[part.name]["optimizer"] = total

    def on_step_end(self, trainer: pw.Trainer, logs: dict) -> None:
        self.ends.append((trainer.span.phase.name if trainer.span else "?", time.perf_counter()))


def one_run(variant: str, args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(0)
    train = data(args.batch * args.steps * 2)
    model = transformer_seq2seq(len(train.src_vocab), len(train.tgt_vocab), d_model=256, heads=4, enc_layers=6,
                                dec_layers=2, ff=1024, dropout=0.0)
    plan = pw.Plan([pw.Phase("decoder", steps=args.steps, train={"decoder": 1e-3}),
                    pw.Phase("all", steps=args.steps, train={"decoder": 1e-3, "encoder": 1e-5})])
    meter = Meter()
    trainer = pw.Trainer(model, pw.Parts(model), plan, Seq2SeqTask(), batch_size=args.batch, collate_fn=collate,
                         device="auto", cache="off", distributed=variant, callbacks=[meter],
                         fsdp_units=["encoder.layers.*"] if variant == "fsdp2" else ())
    start = time.perf_counter()
    trainer.fit(train)
    times: dict[str, list[float]] = {}
    last = start
    for phase, end in meter.ends:
        times.setdefault(phase, []).append(end - last)
        last = end
    return {"step_s": {ph: statistics.median(t[2:] or t) for ph, t in times.items()}, "memory": meter.memory}


def worker(args: argparse.Namespace) -> None:
    rank = int(os.environ["RANK"])
    rounds: list[dict[str, Any]] = []
    for r in range(args.repeats):
        order = ["ddp", "fsdp2"] if r % 2 == 0 else ["fsdp2", "ddp"]
        rounds.append({v: one_run(v, args) for v in order})
    if rank == 0 or args.all_ranks:
        Path(args.out, f"rank{rank}.json").write_text(json.dumps(rounds))
    dist.barrier()
    dist.destroy_process_group()


def table(out: Path, ranks: int) -> None:
    mib = 1 << 20
    for rank in range(ranks):
        rounds = json.loads((out / f"rank{rank}.json").read_text())
        print(f"rank {rank}: bytes on this rank at each phase's last step (MiB: params / grads / optimizer state)")
        for phase in ("decoder", "all"):
            for variant in ("ddp", "fsdp2"):
                mem = rounds[-1][variant]["memory"][phase]
                cells = "  ".join(f"{part} {m['params'] / mib:.2f} / {m['grads'] / mib:.2f} / "
                                  f"{m.get('optimizer', 0) / mib:.2f}" for part, m in mem.items())
                print(f"  phase {phase:<8} {variant:<6} {cells}")
    rounds = json.loads((out / "rank0.json").read_text())
    for phase in ("decoder", "all"):
        ddp = statistics.median(r["ddp"]["step_s"][phase] for r in rounds)
        fsdp = statistics.median(r["fsdp2"]["step_s"][phase] for r in rounds)
        ratio = statistics.median(r["fsdp2"]["step_s"][phase] / r["ddp"]["step_s"][phase] for r in rounds)
        print(f"step time, phase {phase:<8} ddp {ddp * 1e3:7.1f} ms  fsdp2 {fsdp * 1e3:7.1f} ms  "
              f"fsdp2/ddp {ratio:.2f}x (median of {len(rounds)} rounds)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None)
    ap.add_argument("--all-ranks", action="store_true", default=True)
    args = ap.parse_args()
    if "RANK" in os.environ:
        return worker(args)
    out = Path(args.out or tempfile.mkdtemp(prefix="fsdp-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", "29531", __file__, "--steps", str(args.steps), "--batch", str(args.batch),
           "--repeats", str(args.repeats), "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(cmd, check=True, env=env)
    print(f"torch {torch.__version__}, 2 ranks ({'nccl' if torch.cuda.is_available() else 'gloo, CPU'}), "
          f"global batch {args.batch}, {args.steps} steps per phase")
    table(out, 2)


if __name__ == "__main__":
    main()
