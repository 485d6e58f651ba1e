"""Run by tests/test_fsdp.py, under torchrun (2 ranks, FSDP2) or plainly (one process).

Trains a GRU encoder-decoder by a plan whose first phase trains the decoder on the frozen encoder
(with the encoder cache and the guard) and whose second unfreezes the encoder at 1/100 of the
decoder's learning rate, evaluating on dev data at each epoch end. ``argv[2]``:

- ``full``: the whole plan in ``OUT/<name>``; writes this rank's report (the encoder's whole weights
  when phase 2 starts, per-step losses, whether the cache ran, the shapes of its local shards);
- ``stop``: the same plan, stopped by ``max_steps`` inside phase 2 (``OUT/resumed``);
- ``resume``: resumes ``OUT/resumed`` to the plan's end;
- ``tied``: a model with a tied tensor that ``fsdp_units`` would split; writes the error;
- ``lora``: LoRA adapters (PEFT) on the decoder train first, then the decoder's base weights at a
  lower rate; writes the whole weights at each phase start and at the end;
- ``guard``: rank 1 alone changes its shard of the frozen encoder inside phase 1; writes what each
  rank's guard raised when phase 2 began.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

import partwise as pw
from partwise.data import Seq2SeqDataset, Vocab, collate
from partwise.seq2seq import Seq2SeqTask, gru_seq2seq

STOP_AT = 15  # 6 steps per epoch: inside the second phase (steps 12..23), not at an epoch end


def reversal_data(n: int, seed: int) -> Seq2SeqDataset:
    g = torch.Generator().manual_seed(seed)
    pairs = []
    for _ in range(n):
        k = 5  # one length: the mean over each rank's tokens averages to the mean over all of them
        word = [chr(ord("a") + i) for i in torch.randint(0, 8, (k,), generator=g).tolist()]
        pairs.append((word, [c.upper() for c in reversed(word)]))
    return Seq2SeqDataset(pairs, Vocab.build([[chr(ord("a") + i) for i in range(8)]]),
                          Vocab.build([[chr(ord("A") + i) for i in range(8)]]))


def whole(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t.detach().clone()


class Report:
    def __init__(self) -> None:
        self.losses: list[float] = []
        self.encoder_at: dict[str, dict[str, list[float]]] = {}
        self.cached: dict[str, bool] = {}

    def on_step_end(self, trainer: pw.Trainer, logs: dict) -> None:
        self.losses.append(logs["loss"])

    def on_phase_start(self, trainer: pw.Trainer, span: pw.PhaseSpan) -> None:
        self.cached[span.phase.name] = trainer.cache is not None
        enc = trainer.model.encoder  # whole tensors: a collective every rank takes here
        self.encoder_at[span.phase.name] = {n: whole(p).flatten().tolist() for n, p in enc.named_parameters()}


def build() -> tuple[nn.Module, pw.Plan]:
    torch.manual_seed(0)
    n = len(reversal_data(1, 0).src_vocab)
    model = gru_seq2seq(n, n, emb=16, hidden=32, attention="dot", dropout=0.0)
    opt = {"name": "adamw", "weight_decay": 0.0}
    plan = pw.Plan([pw.Phase("decoder", epochs=2, train={"decoder": 1e-2}, optimizer=opt),
                    pw.Phase("all", epochs=2, train={"decoder": 1e-2, "encoder": 1e-4}, optimizer=opt)])
    return model, plan


def main(out: Path, mode: str, name: str) -> None:
    rank = int(__import__("os").environ.get("RANK", "0"))
    if mode == "tied":
        return tied(out)
    if mode == "guard":
        return guard(out)
    if mode == "lora":
        return lora(out)
    model, plan = build()
    report = Report()
    trainer = pw.Trainer(model, pw.Parts(model), plan, Seq2SeqTask(), run_dir=out / name, batch_size=16,
                         collate_fn=collate, seed=1, device="cpu", guard=True, cache="auto",
                         best_metric=("loss", "min"), distributed="fsdp2", callbacks=[report])
    train, dev = reversal_data(96, 0), reversal_data(24, 1)
    if mode == "resume":
        trainer.fit(train, dev, resume=out / name)
    else:
        trainer.fit(train, dev, max_steps=STOP_AT if mode == "stop" else None)
    world = dist.get_world_size() if dist.is_initialized() else 1
    local = {n: list(getattr(p, "to_local", lambda p=p: p)().shape) for n, p in model.named_parameters()}
    result = {"losses": report.losses, "encoder_at": report.encoder_at, "local_shapes": local,
              "sharded": trainer.sharded, "history": trainer.history, "world": world,
              "cached": report.cached}
    (out / f"{name}-{mode}-world{world}-rank{rank}.json").write_text(json.dumps(result))
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


class Tamper:
    """Rank 1 alone adds 1 to its shard of the frozen encoder's embedding after step 3."""

    def on_step_end(self, trainer: pw.Trainer, logs: dict) -> None:
        if trainer.step == 3 and trainer.rank == 1:
            with torch.no_grad():
                trainer.model.encoder.embed.weight.to_local().add_(1.0)


def guard(out: Path) -> None:
    model, plan = build()
    trainer = pw.Trainer(model, pw.Parts(model), plan, Seq2SeqTask(), batch_size=16, collate_fn=collate, seed=1,
                         device="cpu", guard=True, distributed="fsdp2", callbacks=[Tamper()])
    try:
        trainer.fit(reversal_data(96, 0))
        message = "no error"
    except pw.FrozenPartChanged as e:
        message = f"{type(e).__name__} at step {trainer.step}: {e}"
    (out / f"guard-rank{trainer.rank}.txt").write_text(message)
    dist.barrier()
    dist.destroy_process_group()


class Weights:
    def __init__(self) -> None:
        self.at: dict[str, dict[str, list[float]]] = {}

    def on_phase_start(self, trainer: pw.Trainer, span: pw.PhaseSpan) -> None:
        self.at[span.phase.name] = {n: whole(p).flatten().tolist() for n, p in trainer.model.named_parameters()}


def lora(out: Path) -> None:
    from partwise.peft import add_lora

    model, _ = build()
    adapters = add_lora(model, "decoder", r=4)
    plan = pw.Plan([pw.Phase("adapters", epochs=2, train={"decoder.lora": 1e-2}),
                    pw.Phase("base too", epochs=1, train={"decoder.lora": 1e-2, "decoder": 1e-4})])
    seen = Weights()
    trainer = pw.Trainer(model, pw.Parts(model, adapters.spec), plan, Seq2SeqTask(), batch_size=16,
                         collate_fn=collate, seed=1, device="cpu", guard=True, distributed="fsdp2", callbacks=[seen])
    trainer.fit(reversal_data(96, 0))
    final = {n: whole(p).flatten().tolist() for n, p in model.named_parameters()}
    world = dist.get_world_size() if dist.is_initialized() else 1
    (out / f"lora-world{world}-rank{trainer.rank}.json").write_text(
        json.dumps({"at": seen.at, "final": final, "parts": trainer.parts.names}))
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def tied(out: Path) -> None:
    model = nn.Module()
    model.embed = nn.Embedding(10, 8)
    model.encoder = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))
    model.head = nn.Linear(8, 10, bias=False)
    model.head.weight = model.embed.weight
    parts = pw.Parts(model)  # the tied tensor is part 'embed''s, reached from 'head' too
    plan = pw.Plan([pw.Phase("all", steps=1, train={"embed": 1e-3, "encoder": 1e-3, "head": 1e-3})])
    try:
        pw.Trainer(model, parts, plan, lambda m, b: m.head(m.encoder(m.embed(b))).sum(), distributed="fsdp2",
                   fsdp_units=["head"], device="cpu")
        message = "no error"
    except pw.ConfigError as e:
        message = str(e)
    rank = dist.get_rank()
    (out / f"tied-rank{rank}.txt").write_text(message)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "run")
