"""Run by tests/test_distributed.py under torchrun: retrains a GRU decoder on a frozen encoder with
the frozen-encoder cache on or off (``argv[2]``), then saves this rank's per-step losses, weights and
what it learnt about the cache (a memory-mapped copy of it is built too, and compared)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist

import partwise as pw
from partwise._train._cache import EncoderCache
from partwise.data import Seq2SeqDataset, Vocab, collate
from partwise.seq2seq import Seq2SeqTask, gru_seq2seq


def reversal_data(n: int = 96) -> Seq2SeqDataset:
    g = torch.Generator().manual_seed(0)
    pairs = []
    for _ in range(n):
        k = int(torch.randint(2, 7, (1,), generator=g))
        word = [chr(ord("a") + i) for i in torch.randint(0, 8, (k,), generator=g).tolist()]
        pairs.append((word, [c.upper() for c in reversed(word)]))
    return Seq2SeqDataset(pairs, Vocab.build(s for s, _ in pairs), Vocab.build(t for _, t in pairs))


class Losses:
    def __init__(self) -> None:
        self.values: list[float] = []

    def on_step_end(self, trainer: pw.Trainer, logs: dict) -> None:
        self.values.append(logs["loss"])


def main(out: Path, cache: str) -> None:
    data = reversal_data()
    torch.manual_seed(0)
    model = gru_seq2seq(len(data.src_vocab), len(data.tgt_vocab), emb=16, hidden=32, attention="dot", dropout=0.0)
    plan = pw.Plan([pw.Phase("decoder", epochs=3, train={"decoder": 1e-2})])
    losses = Losses()
    trainer = pw.Trainer(model, pw.Parts(model), plan, Seq2SeqTask(), batch_size=16, collate_fn=collate, seed=1,
                         cache=cache, device="cpu", callbacks=[losses])  # 16 = the global batch
    trainer.fit(data)
    rank, world = dist.get_rank(), dist.get_world_size()
    report = {"losses": losses.values, "cached": trainer.cache is not None,
              "cache_rows": len(trainer.cache) if trainer.cache is not None else 0,
              "state": {k: v.clone() for k, v in model.state_dict().items()}}
    if trainer.cache is not None:  # the same cache, memory-mapped (spill_bytes=0), looks up the same values
        mapped = EncoderCache.build(trainer.task, model, data, collate, torch.device("cpu"), spill_dir=out / "spill",
                                    spill_bytes=0, rank=rank, world=world)
        batch = collate([data[i] for i in (0, 95, 17, 42)])
        a, b = trainer.cache.lookup(batch, torch.device("cpu")), mapped.lookup(batch, torch.device("cpu"))
        report["mapped_equal"] = bool(torch.equal(a.states, b.states) and torch.equal(a.final, b.final))
        report["mapped_files"] = sorted(p.name for p in (out / "spill" / f"rank{rank}").iterdir())
    torch.save(report, out / f"{cache}-rank{rank}.pt")
    dist.barrier()  # both ranks done before either tears the group down
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
