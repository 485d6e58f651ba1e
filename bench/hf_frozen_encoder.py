"""Decoder-only fine-tuning of Hugging Face encoder–decoders on a frozen encoder, with and without the cache.

Two randomly initialised models (no download): a Whisper with whisper-tiny's dimensions (d_model 384,
4+4 layers, 6 heads, FFN 1536, 80 mel bins, vocabulary 51,865) on shorter audio (``--frames``, 3000 in
whisper-tiny), and a T5-small-shaped model (d_model 512, 6+6 layers, 8 heads, FFN 2048, vocabulary
32,128). ``--scale small`` divides widths, layers and vocabulary so that a 2-core CPU finishes in a few
minutes. Random inputs and random 16-token targets; the same batches, order and initial weights in
every variant:

  (a) HF-style loop: ``model.freeze_encoder()`` (Whisper) or ``model.encoder.requires_grad_(False)``
      (T5; the shared embedding freezes with it), ``model.train()``, the model's own ``labels=`` loss
      with ``use_cache=False`` (as partwise's task calls it), the encoder runs every step; AdamW over
      what still requires grad;
  (b) ``partwise.Trainer`` with ``partwise.hf.parts`` and ``Seq2SeqLMTask``, a plan that trains only the
      decoder, ``cache="off"``;
  (c) the same with ``cache="on"``: encoder hidden states computed once, fed through ``encoder_outputs=``;
  (d) lower bound: a hand loop over encoder outputs precomputed before timing (no encoder work at all).

Each variant runs in its own subprocess (its peak resident memory is its own ``ru_maxrss``). The first
epoch is warm-up (and, for (c), contains the cache build, reported separately); the per-epoch figure is
the median of the later epochs. "(c) amortised" spreads the build over ``--amortise`` epochs.

    .venv/bin/python bench/hf_frozen_encoder.py [--scale small|full] [--epochs 4] [--rows 64] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

VARIANTS = {"hf": "(a) HF-style loop, encoder every step", "off": "(b) partwise, cache off",
            "on": "(c) partwise, cache on", "bound": "(d) decoder-only lower bound"}


def build(model: str, scale: str, frames: int) -> Any:
    import transformers as tf

    d = 1 if scale == "full" else 4
    torch.manual_seed(0)
    if model == "whisper":
        return tf.WhisperForConditionalGeneration(tf.WhisperConfig(
            vocab_size=51865 // d, d_model=384 // d, encoder_layers=4 // min(d, 2), decoder_layers=4 // min(d, 2),
            encoder_attention_heads=6, decoder_attention_heads=6, encoder_ffn_dim=1536 // d,
            decoder_ffn_dim=1536 // d, num_mel_bins=80, max_source_positions=frames // 2, max_target_positions=448,
            pad_token_id=0, decoder_start_token_id=1, eos_token_id=2, bos_token_id=1,
            begin_suppress_tokens=None, suppress_tokens=None))
    return tf.T5ForConditionalGeneration(tf.T5Config(
        vocab_size=32128 // d, d_model=512 // d, d_kv=64 // d, d_ff=2048 // d, num_layers=6 // min(d, 2),
        num_heads=8, pad_token_id=0, eos_token_id=2, decoder_start_token_id=1))


def rows(model: str, n: int, frames: int, vocab: int) -> Any:
    from partwise.hf import Seq2SeqLMDataset

    g = torch.Generator().manual_seed(1)
    out = []
    for i in range(n):
        labels = torch.randint(3, vocab, (16,), generator=g).tolist()
        if model == "whisper":
            out.append({"input_features": torch.randn(80, frames, generator=g), "labels": labels})
        else:
            out.append({"input_ids": torch.randint(3, vocab, (48 + i % 16,), generator=g).tolist(), "labels": labels})
    return Seq2SeqLMDataset(out)


def worker(args: argparse.Namespace) -> dict[str, Any]:
    from torch.utils.data import DataLoader

    import partwise as pw
    import partwise.hf as ph

    torch.set_num_threads(args.threads)
    model = build(args.model, args.scale, args.frames)
    data = rows(args.model, args.rows, args.frames, model.config.vocab_size)
    collate = ph.Seq2SeqLMCollator(0)
    loader = DataLoader(data, batch_size=args.batch_size, shuffle=False, collate_fn=collate)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    epochs: list[float] = []
    build_s = 0.0
    if args.variant in ("off", "on"):
        parts = ph.parts(model)
        plan = pw.Plan([pw.Phase("decoder", epochs=args.epochs, train={"decoder": 1e-4})])

        class Clock:
            t = time.perf_counter()

            def on_phase_start(self, trainer: Any, span: Any) -> None:
                nonlocal build_s
                build_s = time.perf_counter() - self.t

            def on_epoch_end(self, trainer: Any, metrics: dict[str, Any]) -> None:
                epochs.append(time.perf_counter() - self.t)
                self.t = time.perf_counter()

        trainer = pw.Trainer(model, parts, plan, ph.Seq2SeqLMTask(), batch_size=args.batch_size, collate_fn=collate,
                             cache=args.variant, callbacks=[Clock()], seed=0)
        trainer.fit(loader)
    else:
        if args.model == "whisper":
            model.freeze_encoder()
        else:
            model.encoder.requires_grad_(False)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.01)
        batches = list(loader)
        encoded = []
        if args.variant == "bound":
            with torch.no_grad():
                model.eval()
                for b in batches:
                    enc = {k: v for k, v in b.items() if k not in ("labels", "index")}
                    encoded.append(model.get_encoder()(**enc).last_hidden_state)
        for _ in range(args.epochs):
            t = time.perf_counter()
            model.train()
            for i, b in enumerate(batches):
                if args.variant == "bound":
                    from transformers.modeling_outputs import BaseModelOutput

                    out = model(encoder_outputs=BaseModelOutput(last_hidden_state=encoded[i]),
                                attention_mask=b.get("attention_mask"), labels=b["labels"], use_cache=False)
                else:
                    out = model(**{k: v for k, v in b.items() if k != "index"}, use_cache=False)
                out.loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            epochs.append(time.perf_counter() - t)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"epochs": epochs, "build": build_s, "peak_mb": peak / 1024, "rise_mb": (peak - base) / 1024,
            "params": sum(p.numel() for p in model.parameters())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", choices=["small", "full"], default="small")
    p.add_argument("--models", default="whisper,t5")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--frames", type=int, default=600, help="mel frames per example (whisper-tiny: 3000)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--amortise", type=int, default=3)
    p.add_argument("--variant", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.variant:
        print(json.dumps(worker(args)))
        return
    print(f"scale={args.scale} rows={args.rows} batch={args.batch_size} epochs={args.epochs} threads={args.threads} "
          f"torch {torch.__version__}")
    for model in args.models.split(","):
        res = {}
        for v in VARIANTS:
            cmd = [sys.executable, __file__, "--variant", v, "--model", model] + [
                f"--{k.replace('_', '-')}={getattr(args, k)}" for k in
                ("scale", "epochs", "rows", "batch_size", "frames", "threads")]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
            res[v] = json.loads(out)
        steady = {v: statistics.median(r["epochs"][1:]) for v, r in res.items()}
        first = res["on"]["epochs"][0]
        amortised = (first + steady["on"] * (args.amortise - 1)) / args.amortise
        print(f"{model} ({res['hf']['params'] / 1e6:.1f}M params):")
        for v, label in VARIANTS.items():
            extra = f"  (first epoch incl. cache build {first:.2f} s, build {res[v]['build']:.2f} s)" if v == "on" else ""
            print(f"  {label:40s} {steady[v]:7.3f} s/epoch  peak RSS {res[v]['peak_mb']:7.0f} MB "
                  f"(+{res[v]['rise_mb']:.0f}){extra}")
        print(f"  (c) vs (a) per epoch: {steady['hf'] / steady['on']:.2f}x (target >= 3x); amortised over "
              f"{args.amortise} epochs: {steady['hf'] / amortised:.2f}x (target >= 2x)")
        print(f"  (b) vs (a): {steady['hf'] / steady['off']:.2f}x (target >= 0.97x); (c) / (d): "
              f"{steady['on'] / steady['bound']:.2f}x of the lower bound")


if __name__ == "__main__":
    main()
