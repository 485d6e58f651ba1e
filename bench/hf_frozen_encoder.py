"""Decoder-only fine-tuning of Hugging Face encoder–decoders on a frozen encoder, with and without the cache.

Two randomly initialised models (no download): a Whisper with whisper-tiny's dimensions (d_model 384,
4+4 layers, 6 heads, FFN 1536, 80 mel bins, vocabulary 51,865) on shorter audio (``--frames``, 3000 in
whisper-tiny), and a T5-small-shaped model (d_model 512, 6+6 layers, 8 heads, FFN 2048, vocabulary
32,128). ``--scale small`` (the default) divides widths and vocabulary by 4 and layers by 2 so that a
2-core CPU finishes in a few minutes. Random inputs (T5: 48 to 63 tokens) and random 16-token targets;
the same batches, in the same order, and the same initial weights in every variant:

  (a) HF-style loop: ``model.freeze_encoder()`` (Whisper) or ``model.encoder.requires_grad_(False)``
      (T5; the shared embedding freezes with it), ``model.train()`` (which turns the frozen encoder's
      dropout back on, as it does for anyone who writes this loop), the model's own ``labels=`` loss,
      ``use_cache=False`` (no key/value cache built in training), the encoder runs every step; AdamW
      over what still requires grad;
  (b) ``partwise.Trainer`` with ``partwise.hf.parts`` and ``Seq2SeqLMTask``, a plan that trains only the
      decoder, ``cache="off"`` (the frozen encoder runs every step, in eval mode);
  (c) the same with ``cache="on"``: encoder hidden states computed once (in round 0), fed through
      ``encoder_outputs=``;
  (d) lower bound: the loop of (a) with ``encoder_outputs=`` precomputed for that epoch (untimed, inside
      its turn), so no encoder work at all;
  (e) one encoder pass: the frozen encoder (eval mode, no grad) over that epoch's batches;
  (f) the cache build: ``EncoderCache.build`` over the training rows, as the Trainer calls it.

Method: the six variants run in threads of this one process and take turns epoch by epoch, rotated
round by round (``bench/_interleave.py``), one intra-op thread; round 0 is warm-up (and holds (c)'s
build); medians over the timed rounds, ratios as medians of per-round ratios. Amortised, per round:
(a) / ((c) + (f) / ``--amortise``). Targets (issue 13): (c) >= 3x (a) per epoch, >= 2x amortised
over 3 epochs, (b) >= 0.97x (a). ``--memory`` also runs each variant alone in a subprocess for two
epochs and reports its peak resident memory (the one-process timing run cannot separate them).

    .venv/bin/python bench/hf_frozen_encoder.py [--quick] [--scale small|full] [--repeats 5] [--memory]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from _interleave import Gate, RssPeak, interleave, load_line, median, paired  # noqa: E402

VARIANTS = {"hf": "(a) HF-style loop, encoder every step", "off": "(b) partwise, cache off",
            "on": "(c) partwise, cache on", "bound": "(d) decoder-only lower bound",
            "encode": "(e) one encoder pass (no grad)", "build": "(f) cache build"}


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


class Setup:
    """One model's data, loader settings and initial weights, shared by the variants."""

    def __init__(self, args: argparse.Namespace, model: str):
        import partwise.hf as ph

        self.args, self.name = args, model
        self.model = build(model, args.scale, args.frames)
        self.data = rows(model, args.rows, args.frames, self.model.config.vocab_size)
        self.collate = ph.Seq2SeqLMCollator(0)
        self.cache_bytes = 0

    def loader(self) -> DataLoader:
        return DataLoader(self.data, batch_size=self.args.batch_size, shuffle=False, collate_fn=self.collate)

    def fresh(self) -> Any:
        return copy.deepcopy(self.model)

    def hf_frozen(self) -> tuple[Any, torch.optim.Optimizer]:
        """The model as an HF user freezes its encoder, and AdamW over what still requires grad."""
        model = self.fresh()
        if self.name == "whisper":
            model.freeze_encoder()
        else:
            model.encoder.requires_grad_(False)
        model.train()
        return model, torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4,
                                        weight_decay=0.01)


def _inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in batch.items() if k not in ("labels", "index")}


def run_hf(s: Setup, gate: Gate, rounds: int, bound: bool) -> None:
    from transformers.modeling_outputs import BaseModelOutput

    model, opt = s.hf_frozen()
    loader = s.loader()
    for _ in range(rounds):
        gate.start()
        if bound:  # untimed: this epoch's encoder outputs
            with torch.no_grad():
                hidden = [model.get_encoder()(**_inputs(b)).last_hidden_state for b in loader]
            gate.reset_clock()
        for i, b in enumerate(loader):
            if bound:
                out = model(encoder_outputs=BaseModelOutput(last_hidden_state=hidden[i]),
                            attention_mask=b.get("attention_mask"), labels=b["labels"], use_cache=False)
            else:
                out = model(**_inputs(b), labels=b["labels"], use_cache=False)
            out.loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        gate.lap()


def run_partwise(s: Setup, gate: Gate, rounds: int, cache: str) -> None:
    import partwise as pw
    import partwise.hf as ph

    model = s.fresh()
    plan = pw.Plan([pw.Phase("decoder", epochs=rounds, train={"decoder": 1e-4}, optimizer={"weight_decay": 0.01})])

    class Turns:
        done = 0

        def on_epoch_end(self, trainer: Any, metrics: dict[str, Any]) -> None:
            self.done += 1
            (gate.lap if self.done == rounds else gate.lap_and_start)()

    trainer = pw.Trainer(model, ph.parts(model), plan, ph.Seq2SeqLMTask(), device="cpu", cache=cache,
                         callbacks=[Turns()], seed=0)
    gate.start()
    trainer.fit(s.loader())
    if cache == "on" and trainer.cache is None:
        raise RuntimeError("(c) did not use the cache")


def run_encode(s: Setup, gate: Gate, rounds: int) -> None:
    model = s.fresh().eval()
    for _ in range(rounds):
        gate.start()
        with torch.no_grad():
            for b in s.loader():
                model.get_encoder()(**_inputs(b))
        gate.lap()


def run_build(s: Setup, gate: Gate, rounds: int) -> None:
    import partwise.hf as ph
    from partwise._train._cache import EncoderCache

    model = s.fresh().eval()
    for _ in range(rounds):
        gate.start()
        cache = EncoderCache.build(ph.Seq2SeqLMTask(), model, s.data, s.collate, torch.device("cpu"))
        gate.lap()
    s.cache_bytes = cache.nbytes


def variants(s: Setup, rounds: int) -> dict[str, Any]:
    return {"hf": lambda g: run_hf(s, g, rounds, bound=False), "off": lambda g: run_partwise(s, g, rounds, "off"),
            "on": lambda g: run_partwise(s, g, rounds, "on"), "bound": lambda g: run_hf(s, g, rounds, bound=True),
            "encode": lambda g: run_encode(s, g, rounds), "build": lambda g: run_build(s, g, rounds)}


def peak_rss(args: argparse.Namespace, model: str, variant: str) -> str:
    """Peak resident memory of a subprocess that runs only ``variant`` for two epochs (after its setup)."""
    cmd = [sys.executable, __file__, "--memory-of", f"{model}:{variant}", "--scale", args.scale,
           "--rows", str(args.rows), "--batch-size", str(args.batch_size), "--frames", str(args.frames)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    m = json.loads(out)
    return f"peak RSS {m['peak_mib']:.0f} MiB (+{m['rise_mib']:.0f}), alone"


def report(s: Setup, t: dict[str, list[float]], args: argparse.Namespace, memory: dict[str, str]) -> None:
    med = {v: median(x) for v, x in t.items()}
    params = sum(p.numel() for p in s.model.parameters())
    enc = sum(p.numel() for p in s.model.get_encoder().parameters())
    print(f"{s.name} ({params / 1e6:.1f}M params, encoder {enc / 1e6:.1f}M; cache {s.cache_bytes / 2**20:.1f} MiB):")
    for v, label in VARIANTS.items():
        mem = f"  {memory[v]}" if v in memory else ""
        print(f"  {label:40s} {med[v]:7.3f} s/epoch (min {min(t[v]):.3f}, max {max(t[v]):.3f}){mem}")
    amortised = [c + b / args.amortise for c, b in zip(t["on"], t["build"], strict=True)]  # per round
    print(f"  (c) vs (a) per epoch: {paired(t['hf'], t['on']):.2f}x (target >= 3x); amortised over {args.amortise} "
          f"epochs: {paired(t['hf'], amortised):.2f}x (target >= 2x)")
    print(f"  ceiling for any cache, (a) / (d): {paired(t['hf'], t['bound']):.2f}x (the decoder's own forward and "
          "backward, cross-attention projections of the encoder states included, stay)")
    print(f"  (b) vs (a): {paired(t['hf'], t['off']):.2f}x (target >= 0.97x); (c) / (d): "
          f"{paired(t['on'], t['bound']):.2f}x of the lower bound; build / one encoder pass: "
          f"{paired(t['build'], t['encode']):.2f}x")


def memory_worker(spec: str, args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    model, variant = spec.split(":")
    s = Setup(args, model)
    with RssPeak() as rss:
        interleave({variant: variants(s, 2)[variant]}, 2)
    print(json.dumps({"peak_mib": rss.peak_mib, "rise_mib": rss.peak_mib - rss.start_mib}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="32 rows, 300 frames, 3 timed rounds")
    p.add_argument("--scale", choices=["small", "full"], default="small")
    p.add_argument("--models", default="whisper,t5")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds after one warm-up round (default 5)")
    p.add_argument("--rows", type=int, default=None, help="training rows (default 64)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--frames", type=int, default=None, help="mel frames per example (default 600; whisper-tiny: 3000)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--amortise", type=int, default=3)
    p.add_argument("--memory", action="store_true", help="also measure each variant's peak memory alone")
    p.add_argument("--memory-of", help=argparse.SUPPRESS)
    args = p.parse_args()
    quick = {"rows": 32, "frames": 300, "repeats": 3} if args.quick else {"rows": 64, "frames": 600, "repeats": 5}
    for key, value in quick.items():  # options given explicitly win over --quick
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.memory_of:
        memory_worker(args.memory_of, args)
        return
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    print(f"hf_frozen_encoder: scale={args.scale} rows={args.rows} batch={args.batch_size} frames={args.frames} "
          f"timed rounds={args.repeats} (+1 warm-up) threads={args.threads} torch {torch.__version__}; one process, "
          "variants alternated epoch by epoch")
    for model in args.models.split(","):
        s = Setup(args, model)
        times = interleave(variants(s, 1 + args.repeats), 1 + args.repeats, threads=args.threads)
        memory = {v: peak_rss(args, model, v) for v in VARIANTS} if args.memory else {}
        report(s, {v: x[1:] for v, x in times.items()}, args, memory)
    print(load_line(load_before))


if __name__ == "__main__":
    main()
