"""A hand-written accelerate loop that follows a partwise plan: decoder first (encoder and shared embedding
frozen), then the encoder joins at 1/10 of the learning rate; ``accelerator.save_state``/``load_state``
resume it exactly. Runs in one process or under ``torchrun``/``accelerate launch`` (gloo on CPU).

    python accelerate_loop.py OUT [--model bart|t5|whisper] [--save-at N] [--stop-at N] [--resume DIR]
    python -m torch.distributed.run --nproc_per_node 2 accelerate_loop.py OUT
    accelerate launch --cpu --num_processes 2 accelerate_loop.py OUT

Writes ``OUT/rank<r>.pt``: the weights at the start, at the end of the frozen phase and at the end, the
losses, and the trainable parts each time the model object (the DDP wrapper) changed.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformers as tf  # noqa: E402
from accelerate import Accelerator  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

import partwise as pw  # noqa: E402
import partwise.hf as ph  # noqa: E402

PLAN = pw.Plan([
    pw.Phase("decoder", steps=4, train={"decoder": 1e-2}),
    pw.Phase("all", steps=4, train={"decoder": 1e-2, "encoder": 1e-3}),
])


def build_model(name: str = "bart") -> tf.PreTrainedModel:
    torch.manual_seed(0)
    if name == "t5":
        return tf.T5ForConditionalGeneration(tf.T5Config(
            vocab_size=40, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2, pad_token_id=0, eos_token_id=2,
            decoder_start_token_id=1, dropout_rate=0.1))
    if name == "whisper":
        return tf.WhisperForConditionalGeneration(tf.WhisperConfig(
            vocab_size=40, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
            decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, num_mel_bins=8, max_source_positions=12,
            max_target_positions=32, pad_token_id=0, eos_token_id=2, bos_token_id=1, decoder_start_token_id=1,
            begin_suppress_tokens=None, suppress_tokens=None, dropout=0.1))
    return tf.BartForConditionalGeneration(tf.BartConfig(
        vocab_size=40, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=64,
        pad_token_id=0, eos_token_id=2, bos_token_id=1, decoder_start_token_id=1, forced_eos_token_id=None,
        dropout=0.1))


def build_data(name: str = "bart", n: int = 32) -> ph.Seq2SeqLMDataset:
    g = torch.Generator().manual_seed(0)
    rows = []
    for i in range(n):
        src = torch.randint(3, 40, (3 + i % 4,), generator=g).tolist()
        row: dict = {"labels": list(reversed(src)) + [2]}
        if name == "whisper":
            row["input_features"] = torch.randn(8, 24, generator=g)
        else:
            row["input_ids"] = src + [2]
        rows.append(row)
    return ph.Seq2SeqLMDataset(rows)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--save-at", type=int, default=None, help="save_state after this many optimizer steps")
    ap.add_argument("--stop-at", type=int, default=None, help="stop (as if killed) after this many steps")
    ap.add_argument("--resume", type=Path, default=None, help="load_state from this folder first")
    ap.add_argument("--model", choices=["bart", "t5", "whisper"], default="bart")
    args = ap.parse_args()

    accelerator = Accelerator(cpu=True)
    model = build_model(args.model)
    collate = ph.Seq2SeqLMCollator(pad_token_id=0)
    loader = DataLoader(build_data(args.model), batch_size=4, shuffle=False, collate_fn=collate)
    driver = pw.PlanDriver(ph.parts(model), PLAN, guard=True)
    optimizer = driver.build_optimizer()  # before prepare: DDP registers the first phase's trainable set
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    plan = ph.AcceleratePlan(accelerator, driver)
    if args.resume is not None:
        accelerator.load_state(str(args.resume))  # the plan's state first, then weights, optimizer, RNG

    record: dict = {"start": _weights(accelerator, model), "encoder_start": _encoder(accelerator, model), "losses": [],
                    "wrapped": []}
    step, total, seen = plan.steps_done, driver.total_steps(), None
    for step, batch in plan.batches(loader):  # epoch after epoch; on resume, from plan.steps_done
        if step == args.stop_at:
            break
        model = plan.before_step(step, model)  # phase, freeze set, per-part LRs; DDP rebuilt when needed
        loss = model(**{k: v for k, v in batch.items() if k != "index"}).loss
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        record["losses"].append(loss.item())
        if model is not seen:  # a new DDP wrapper (or the first model): what it reduces
            seen = model
            record["wrapped"].append([n for n in driver.parts.names if not driver.parts.is_frozen(n)])
        if step + 1 == 4:
            record["frozen_end"] = _weights(accelerator, model)
            record["encoder_frozen_end"] = _encoder(accelerator, model)
        if step + 1 == args.save_at:
            accelerator.save_state(str(args.out / f"step-{step + 1}"))
    else:
        step = total
    if step == total:
        driver.finish()  # the guard's last check
    record["final"] = _weights(accelerator, model)
    record["encoder_final"] = _encoder(accelerator, model)
    record["lrs"] = {g["part"]: g["lr"] for g in optimizer.param_groups if g["params"]}
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save(record, args.out / f"rank{accelerator.process_index}.pt")
    accelerator.end_training()


def _encoder(accelerator: Accelerator, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in accelerator.unwrap_model(model).get_encoder().state_dict().items()}


def _weights(accelerator: Accelerator, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in accelerator.unwrap_model(model).state_dict().items()}


if __name__ == "__main__":
    main()
