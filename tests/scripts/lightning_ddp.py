"""Run by tests/lightning/test_lightning.py under torchrun with 2 ranks: a Lightning fit with
``strategy="ddp"`` (gloo, CPU) by a plan whose second phase unfreezes the encoder. Saves this rank's
weights at the start, at the end of the frozen phase and at the end, and the parts trainable each
time the DDP wrapper was built."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).parents[1] / "lightning"))
from lightning_helpers import EncDec, Module, data, plan  # noqa: E402

import partwise as pw  # noqa: E402
from partwise import lightning as pw_l  # noqa: E402

warnings.filterwarnings("ignore")


class Watch(L.Callback):
    def __init__(self, parts: pw.Parts) -> None:
        self.parts, self.wrapped, self.seen = parts, [], None
        self.states: dict[str, dict[str, torch.Tensor]] = {}

    def on_train_batch_start(self, trainer: L.Trainer, module: Any, batch: Any, batch_idx: int) -> None:
        if trainer.strategy.model is not self.seen:  # a new DDP wrapper
            self.seen = trainer.strategy.model
            self.wrapped.append([n for n in self.parts.names if not self.parts.is_frozen(n)])
        if trainer.global_step == 8 and "frozen_end" not in self.states:
            self.states["frozen_end"] = {k: v.clone() for k, v in module.model.state_dict().items()}


def main(out: Path) -> None:
    torch.manual_seed(0)
    model = EncDec()
    parts = pw.Parts(model)
    cb = pw_l.PartwisePlan(parts, plan(frozen_epochs=2, epochs=2), guard=True)
    watch = Watch(parts)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=4, callbacks=[cb, watch],
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0)
    # Lightning gives each rank a DistributedSampler shard: the ranks see different batches, so
    # equal weights at the end mean the gradients of every trained part were averaged
    trainer.fit(Module(model), DataLoader(data(128), batch_size=16), DataLoader(data(32, seed=1), batch_size=16))
    rank = dist.get_rank()
    torch.save({"start": start, "frozen_end": watch.states["frozen_end"], "wrapped": watch.wrapped,
                "final": {k: v.clone() for k, v in model.state_dict().items()}}, out / f"rank{rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
