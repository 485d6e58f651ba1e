"""Run by tests/test_distributed.py under torchrun: validation data, a best metric and early stopping,
and an infinite loss on rank 1 only (with finite gradients) at step 2, which every rank must skip.

Each rank writes what it decided (history, step, best value) to ``out/decisions-rank{r}.json``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import TensorDataset

import partwise as pw


def main(out: Path) -> None:
    torch.manual_seed(0)
    model = nn.Module()
    model.body = nn.Sequential(nn.Linear(6, 16), nn.Tanh())
    model.head = nn.Linear(16, 3)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(128, 6, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    train, val = TensorDataset(x[:96], y[:96]), TensorDataset(x[96:], y[96:])
    plan = pw.Plan([pw.Phase("all", epochs=6, train={"head": 0.1, "body": 0.05})])

    rank = int(os.environ.get("RANK", "0"))  # the process group starts with the Trainer
    calls = {"n": 0}

    def loss(m: nn.Module, batch) -> torch.Tensor:
        xb, yb = batch
        calls["n"] += 1
        inf_on_rank1 = float("inf") if rank == 1 and calls["n"] == 3 else 0.0  # gradients stay finite
        return nn.functional.cross_entropy(m.head(m.body(xb)), yb) + inf_on_rank1

    # the validation loss falls, so in "max" mode it stops improving after epoch 1: early stopping
    # fires at epoch 3 (patience 2), while the best checkpoint by ("loss", "min") keeps moving
    trainer = pw.Trainer(model, pw.Parts(model), plan, loss, batch_size=16, seed=5, run_dir=out / "run",
                         best_metric=("loss", "min"), early_stopping=pw.EarlyStopping("loss", "max", patience=2))
    history = trainer.fit(train, val)
    decisions = {"history": [{k: v for k, v in h.items() if k != "seconds"} for h in history],
                 "step": trainer.step, "best": trainer.best, "skipped": trainer.skipped_steps,
                 "weights": [p.double().sum().item() for p in model.parameters()]}
    (out / f"decisions-rank{rank}.json").write_text(json.dumps(decisions), encoding="utf-8")
    if dist.is_initialized():
        dist.barrier()  # both ranks done before either tears the group down
        dist.destroy_process_group()
    # leave without the interpreter's teardown: under load a gloo thread has been seen to keep a rank
    # waiting at exit after everything above had finished (the decisions are written)
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
