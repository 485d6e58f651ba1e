"""Run by tests/test_fsdp.py under torchrun (2 ranks, FSDP2) or plainly: a tiny Hugging Face T5 whose
decoder trains on its frozen encoder (and frozen shared, tied embedding), then the encoder unfreezes
at 1/100 of the decoder's learning rate (``argv[2]``: the precision, fp32 or bf16 autocast). Writes
this rank's losses and the whole weights at the end and at each phase start."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import transformers
from torch.utils.data import TensorDataset

import partwise as pw

SPEC = {"shared": ["shared", "lm_head", "encoder.embed_tokens", "decoder.embed_tokens"],
        "encoder": ["encoder", "!encoder.embed_tokens"], "decoder": ["decoder", "!decoder.embed_tokens"]}


def build() -> transformers.T5ForConditionalGeneration:
    torch.manual_seed(0)
    config = transformers.T5Config(vocab_size=40, d_model=16, d_kv=8, d_ff=32, num_layers=2, num_heads=2,
                                   dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0)
    return transformers.T5ForConditionalGeneration(config)


def whole(t: torch.Tensor) -> list[float]:
    return (t.full_tensor() if hasattr(t, "full_tensor") else t.detach()).flatten().tolist()


class Report:
    def __init__(self) -> None:
        self.losses: list[float] = []
        self.at: dict[str, dict[str, list[float]]] = {}

    def on_step_end(self, trainer: pw.Trainer, logs: dict) -> None:
        self.losses.append(logs["loss"])

    def on_phase_start(self, trainer: pw.Trainer, span: pw.PhaseSpan) -> None:
        self.at[span.phase.name] = {n: whole(p) for n, p in trainer.model.named_parameters()}


def main(out: Path, precision: str) -> None:
    model = build()
    g = torch.Generator().manual_seed(0)
    x = torch.randint(1, 40, (64, 7), generator=g)
    data = TensorDataset(x, x.flip(1))
    plan = pw.Plan([pw.Phase("decoder", steps=4, train={"decoder": 3e-3}),
                    pw.Phase("all", steps=4, train={"decoder": 3e-3, "encoder": 3e-5})])
    report = Report()
    trainer = pw.Trainer(model, pw.Parts(model, SPEC), plan, lambda m, b: m(input_ids=b[0], labels=b[1]).loss,
                         batch_size=16, seed=0, device="cpu", guard=True, distributed="fsdp2", precision=precision,
                         fsdp_units=["encoder.block.*", "decoder.block.*"], callbacks=[report])
    trainer.fit(data)
    final = {n: whole(p) for n, p in model.named_parameters()}
    world = dist.get_world_size() if dist.is_initialized() else 1
    rank = int(os.environ.get("RANK", "0"))
    (out / f"t5-world{world}-rank{rank}.json").write_text(json.dumps(
        {"losses": report.losses, "at": report.at, "final": final, "sharded": trainer.sharded}))
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "fp32")
