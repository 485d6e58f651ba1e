"""Distributed data parallel with parts: only what trains is synchronised.

Under ``torchrun`` the trainer wraps a small module that computes the task's loss, so DDP sees one
forward per step whatever the task does inside (stepwise teacher forcing included). DDP registers
only parameters with ``requires_grad``, so frozen parts cost no all-reduce; the wrapper is rebuilt at
every phase transition that changes the trainable set, and its construction broadcasts rank 0's
parameters and buffers, which keeps the ranks identical.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.distributed as tdist
from torch import nn

T = TypeVar("T")

__all__ = ["LossModule", "rank_and_world", "init_from_env", "wrap", "all_true", "loss_and_norm", "broadcast_object"]


def init_from_env() -> None:
    """Start the default process group from torchrun's environment, if there is one and none is up
    (gloo on CPU, nccl on CUDA)."""
    if tdist.is_available() and not tdist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        tdist.init_process_group(backend=backend)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))


def rank_and_world() -> tuple[int, int]:
    init_from_env()
    if tdist.is_available() and tdist.is_initialized():
        return tdist.get_rank(), tdist.get_world_size()
    return 0, 1


class LossModule(nn.Module):
    """``(batch, ctx) -> loss``: the task's loss of ``model`` as one module, so a wrapper (DDP) or
    FSDP2's root sees one forward per step whatever the task calls inside (``model.encoder(...)``,
    stepwise decoding). With ``encodings`` (an :class:`~partwise.EncoderCache`) the encoder's
    outputs are looked up, not computed."""

    def __init__(self, model: nn.Module, task: Any, encodings: Any = None):
        super().__init__()
        self.model = model
        self.task = task
        self.encodings = encodings

    def forward(self, batch: Any, ctx: Any) -> torch.Tensor:
        if self.encodings is None:
            return self.task.loss(self.model, batch, ctx)
        encoding = self.encodings.lookup(batch, next(self.model.parameters()).device)
        return self.task.loss_from_encoding(self.model, batch, encoding, ctx)


def wrap(model: nn.Module, task: Any, world: int, encodings: Any = None) -> Callable[[Any, Any], torch.Tensor]:
    """``(batch, ctx) -> loss``: the task's loss, through DDP when ``world > 1``. With ``encodings``
    (a :class:`~partwise.EncoderCache`), the encoder's outputs are looked up, not computed."""
    module = LossModule(model, task, encodings)
    if world <= 1:
        return module.forward
    device_ids = [torch.cuda.current_device()] if next(model.parameters()).is_cuda else None
    return nn.parallel.DistributedDataParallel(module, device_ids=device_ids)


def all_true(flag: bool, world: int, device: torch.device) -> bool:
    """``flag`` on every rank (one all-reduce), so all ranks take the same branch."""
    if world <= 1:
        return flag
    t = torch.tensor([0.0 if flag else 1.0], device=device)
    tdist.all_reduce(t)
    return bool(t.item() == 0.0)


def loss_and_norm(loss: torch.Tensor, norm: torch.Tensor | None, world: int) -> tuple[float, float | None]:
    """A step's loss and gradient norm, averaged over ranks and read to the host in one sync (one
    all-reduce). A NaN or inf on any rank makes the mean non-finite on every rank, so all decide alike."""
    t = torch.stack([loss.detach().float().reshape(()), *([] if norm is None else [norm.detach().float().reshape(())])])
    if world > 1:
        tdist.all_reduce(t)
        t = t / world
    values = t.tolist()
    return values[0], (values[1] if norm is not None else None)


def broadcast_object(obj: T, world: int) -> T:
    """Rank 0's ``obj`` on every rank (identity in one process)."""
    if world <= 1:
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=0)
    return box[0]
