"""A tiny LightningModule over an encoder-decoder with BatchNorm and Dropout in the encoder, and the
data and plans the Lightning tests share (imported as a plain module)."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import partwise as pw
from partwise import lightning as pw_l


class EncDec(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 8))
        self.decoder = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))  # no randomness: exact resume

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


class Module(L.LightningModule):
    """Cross-entropy on ``model``; records, per training step, whether the encoder's BatchNorm and
    Dropout were in train mode when they ran, and each part's learning rate."""

    def __init__(self, model: nn.Module, manual: bool = False) -> None:
        super().__init__()
        self.model = model
        self.automatic_optimization = not manual
        self.modes: list[tuple[bool, bool]] = []
        self.lrs: list[dict[str, float]] = []
        self._seen: dict[str, bool] = {}
        for name in ("1", "3"):  # BatchNorm1d, Dropout
            model.encoder.get_submodule(name).register_forward_hook(
                lambda m, i, o, name=name: self._seen.__setitem__(name, m.training))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor | None:
        x, y = batch
        loss = nn.functional.cross_entropy(self.model(x), y)
        self.modes.append((self._seen["1"], self._seen["3"]))
        opt = self.optimizers()
        groups = [g for o in (opt if isinstance(opt, list) else [opt]) for g in o.optimizer.param_groups]
        self.lrs.append({g["part"]: g["lr"] for g in groups if not g.get("no_decay")})
        if not self.automatic_optimization:
            pw_l.manual_step(self, loss)
            return None
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self.model(x), y))

    def configure_optimizers(self) -> Any:
        return pw_l.plan_of(self).configure_optimizers()


def data(n: int = 64, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g))


def loader(n: int = 64, batch_size: int = 16) -> DataLoader[Any]:
    return DataLoader(data(n), batch_size=batch_size, shuffle=False)


def plan(frozen_epochs: int = 2, epochs: int = 2, warmup: int = 3, separate: bool = False) -> pw.Plan:
    enc_opts: dict[str, Any] = {"lr": 1e-3, **({"name": "sgd", "momentum": 0.9} if separate else {})}
    return pw.Plan([
        pw.Phase("decoder only", epochs=frozen_epochs, train={"decoder": 1e-2}, separate=separate),
        pw.Phase("all", epochs=epochs, train={"decoder": 1e-2, "encoder": enc_opts}, separate=separate,
                 schedule=pw.LRSchedule(warmup=warmup)),
    ])


def trainer(callbacks: list[Any], max_epochs: int = 4, **kwargs: Any) -> L.Trainer:
    defaults: dict[str, Any] = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                                    enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    return L.Trainer(max_epochs=max_epochs, callbacks=callbacks, **{**defaults, **kwargs})
