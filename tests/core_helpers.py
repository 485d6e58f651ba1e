"""Shared test models and helpers for the core tests (imported as a plain module)."""

from __future__ import annotations

import torch
from torch import nn


class EncDec(nn.Module):
    """A small encoder–decoder with BatchNorm and Dropout in both halves."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 8)
        )
        self.decoder = nn.Sequential(
            nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of every parameter and buffer, by name."""
    out = {f"p:{n}": p.detach().clone() for n, p in module.named_parameters()}
    out.update({f"b:{n}": b.detach().clone() for n, b in module.named_buffers()})
    return out


def train_steps(model: nn.Module, opt, steps: int, seed: int = 1, zero_grads_everywhere: bool = False) -> None:
    """A few steps of a classifier loop that calls ``model.train()`` every step.

    ``zero_grads_everywhere`` gives every parameter, frozen ones included, a zero ``.grad`` before
    ``backward`` (as some accumulation and DDP code paths do): a frozen parameter left in an
    optimizer then gets weight decay and stale momentum applied.
    """
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        model.train()  # the call that, in plain PyTorch, puts frozen BatchNorm back in training mode
        x = torch.randn(16, 6, generator=gen)
        y = torch.randint(0, 3, (16,), generator=gen)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=False)
        if zero_grads_everywhere:
            for p in model.parameters():
                p.grad = torch.zeros_like(p)
        loss.backward()
        opt.step()
