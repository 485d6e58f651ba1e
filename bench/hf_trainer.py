"""Decoder-only fine-tuning inside the Hugging Face ``Seq2SeqTrainer``: plain vs partwise's plan.

The Whisper with whisper-tiny's dimensions from ``bench/hf_frozen_encoder.py`` (random init, no
download; ``--scale small``, the default, divides widths and vocabulary by 4 and layers by 2 so a
2-core CPU finishes in minutes), random audio features and 16-token targets, the same rows, order
and initial weights in every variant, all through the real ``transformers.Seq2SeqTrainer``:

  (a) plain ``Seq2SeqTrainer``: ``model.freeze_encoder()``, HF's own AdamW over what requires grad
      (lr 1e-4, weight decay 0.01, constant schedule); the encoder runs every step;
  (b) ``partwise.hf.PartwiseSeq2SeqTrainer`` with a one-phase plan that trains the decoder with the same
      optimizer (fused AdamW, HF's default; the plan names it) and options, ``cache="off"`` (the frozen
      encoder runs every step, in eval mode);
  (c) the same with ``cache="on"``: the encoder's outputs computed once (in round 0) and fed through
      ``encoder_outputs=``.

Method: the three run in threads of this one process and take turns epoch by epoch (a trainer
callback hands the turn over at each epoch end; ``bench/_interleave.py``), rotated round by round, one
intra-op thread; round 0 is warm-up (and holds (c)'s cache build); medians over the timed rounds,
ratios as medians of per-round ratios. Targets (issue 22): (c) >= 3x (a) per epoch, (b) >= 0.97x
(a). ``--memory`` also runs each variant alone in a subprocess for two epochs and reports its peak
resident memory.

    .venv/bin/python bench/hf_trainer.py [--quick] [--repeats 5] [--memory]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from _interleave import Gate, RssPeak, interleave, load_line, median, paired  # noqa: E402
from hf_frozen_encoder import build, rows  # noqa: E402

VARIANTS = {"hf": "(a) Seq2SeqTrainer, freeze_encoder()", "off": "(b) PartwiseSeq2SeqTrainer, cache off",
            "on": "(c) PartwiseSeq2SeqTrainer, cache on"}


def trainer_for(variant: str, args: argparse.Namespace, model: Any, data: Any, epochs: int, gate: Gate | None,
                out: str) -> Any:
    import transformers as tf

    import partwise as pw
    import partwise.hf as ph

    class Turns(tf.TrainerCallback):
        """Hands the turn over at each epoch end (the first epoch starts when the gate opens)."""

        done = 0

        def on_train_begin(self, *a: Any, **k: Any) -> None:
            if gate is not None:
                gate.start()

        def on_epoch_end(self, *a: Any, **k: Any) -> None:
            self.done += 1
            if gate is not None:
                (gate.lap if self.done == epochs else gate.lap_and_start)()

    # HF's optimizer options; a plan gives its own (the same values, below)
    hf_options = {"learning_rate": 1e-4, "weight_decay": 0.01, "lr_scheduler_type": "constant"}
    hf_options = hf_options if variant == "hf" else {}
    targs = tf.Seq2SeqTrainingArguments(
        output_dir=out, per_device_train_batch_size=args.batch_size, num_train_epochs=epochs, **hf_options,
        save_strategy="no", report_to=[], use_cpu=True,
        disable_tqdm=True, logging_strategy="no", seed=0, dataloader_num_workers=0)
    common = dict(train_dataset=data, data_collator=ph.Seq2SeqLMCollator(0), callbacks=[Turns()])
    if variant == "hf":
        model.freeze_encoder()
        return tf.Seq2SeqTrainer(model=model, args=targs, **common)
    # HF's default optimizer is torch's fused AdamW (optim="adamw_torch_fused"); the plan names the same
    options = {"weight_decay": 0.01, "fused": True}
    plan = pw.Plan([pw.Phase("decoder", epochs=epochs, train={"decoder": 1e-4}, optimizer=options)])
    return ph.PartwiseSeq2SeqTrainer(model, targs, plan=plan, cache=variant, **common)


def run(variant: str, args: argparse.Namespace, model: Any, data: Any, epochs: int, gate: Gate | None) -> Any:
    with tempfile.TemporaryDirectory() as out:
        trainer = trainer_for(variant, args, model, data, epochs, gate, out)
        trainer.train()
    if variant == "on" and (trainer._phase_cache is None or trainer._phase_cache.cache is None):
        raise RuntimeError("(c) did not use the cache")
    return trainer


def peak_rss(args: argparse.Namespace, variant: str) -> str:
    cmd = [sys.executable, __file__, "--memory-of", variant, "--scale", args.scale, "--rows", str(args.rows),
           "--batch-size", str(args.batch_size), "--frames", str(args.frames)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    m = json.loads(out)
    return f"peak RSS {m['peak_mib']:.0f} MiB (+{m['rise_mib']:.0f}), alone"


def memory_worker(variant: str, args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    model = build("whisper", args.scale, args.frames)
    data = rows("whisper", args.rows, args.frames, model.config.vocab_size)
    with RssPeak() as rss:
        run(variant, args, model, data, 2, None)
    print(json.dumps({"peak_mib": rss.peak_mib, "rise_mib": rss.peak_mib - rss.start_mib}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="32 rows, 300 frames, 3 timed rounds")
    p.add_argument("--scale", choices=["small", "full"], default="small")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds after one warm-up round (default 5)")
    p.add_argument("--rows", type=int, default=None, help="training rows (default 64)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--frames", type=int, default=None, help="mel frames per example (default 600; whisper-tiny: 3000)")
    p.add_argument("--memory", action="store_true", help="also measure each variant's peak memory alone")
    p.add_argument("--memory-of", help=argparse.SUPPRESS)
    args = p.parse_args()
    quick = {"rows": 32, "frames": 300, "repeats": 3} if args.quick else {"rows": 64, "frames": 600, "repeats": 5}
    for key, value in quick.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.memory_of:
        memory_worker(args.memory_of, args)
        return
    torch.set_num_threads(1)
    load_before = os.getloadavg()[0]
    import transformers as tf

    print(f"hf_trainer: whisper scale={args.scale} rows={args.rows} batch={args.batch_size} frames={args.frames} "
          f"timed rounds={args.repeats} (+1 warm-up), 1 thread, torch {torch.__version__}, transformers "
          f"{tf.__version__}; one process, variants alternated epoch by epoch")
    model = build("whisper", args.scale, args.frames)
    data = rows("whisper", args.rows, args.frames, model.config.vocab_size)
    epochs = 1 + args.repeats
    models = {v: build("whisper", args.scale, args.frames) for v in VARIANTS}  # the same seed: equal weights
    t = interleave({v: (lambda g, v=v: run(v, args, models[v], data, epochs, g)) for v in VARIANTS}, epochs)
    t = {v: x[1:] for v, x in t.items()}
    memory = {v: peak_rss(args, v) for v in VARIANTS} if args.memory else {}
    params = sum(p.numel() for p in model.parameters())
    enc = sum(p.numel() for p in model.get_encoder().parameters())
    steps = len(data) // args.batch_size
    print(f"whisper ({params / 1e6:.1f}M params, encoder {enc / 1e6:.1f}M), {steps} steps/epoch:")
    for v, label in VARIANTS.items():
        mem = f"  {memory[v]}" if v in memory else ""
        print(f"  {label:40s} {median(t[v]):7.3f} s/epoch (min {min(t[v]):.3f}, max {max(t[v]):.3f}){mem}")
    print(f"  (c) vs (a) per epoch: {paired(t['hf'], t['on']):.2f}x (target >= 3x); (b) vs (a): "
          f"{paired(t['hf'], t['off']):.2f}x (target >= 0.97x)")
    print(load_line(load_before))


if __name__ == "__main__":
    main()
