"""Run by tests/test_distributed.py, under torchrun (N ranks) or plainly (one process).

Trains a small model by a plan whose second phase unfreezes a part, then saves this rank's weights.
"""

from __future__ import annotations

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
    x = torch.randn(96, 6, generator=g)
    data = TensorDataset(x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long())
    plan = pw.Plan([
        pw.Phase("head", epochs=2, train={"head": 0.2}, optimizer={"name": "sgd", "momentum": 0.9}),
        pw.Phase("all", epochs=2, train={"head": 0.2, "body": 0.1}, optimizer={"name": "sgd", "momentum": 0.9}),
    ])
    parts = pw.Parts(model)

    def loss(m: nn.Module, batch) -> torch.Tensor:
        xb, yb = batch
        return nn.functional.cross_entropy(m.head(m.body(xb)), yb)

    trainer = pw.Trainer(model, parts, plan, loss, batch_size=16, seed=5)  # 16 = the global batch
    trainer.fit(data)
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    torch.save({k: v.clone() for k, v in model.state_dict().items()}, out / f"world{world}-rank{rank}.pt")
    if dist.is_initialized():
        dist.barrier()  # both ranks done before either tears the group down
        dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
