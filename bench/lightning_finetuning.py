"""Frozen backbone, then unfreeze at 1/10 of the learning rate: Lightning's ``BackboneFinetuning``
and partwise side by side.

The model of ``bench/frozen_encoder.py``: a pretrained-style pre-norm Transformer encoder (d_model
256, 6 layers) as the backbone and a GRU decoder with additive attention as the part to train, on
CMUdict G2P training words (``--batches`` length-bucketed batches of 64 per epoch, the same order
in both). The plan: ``--frozen`` epochs with only the decoder training (AdamW, lr 1e-3, weight decay
0.01), then ``--unfrozen`` epochs with the encoder training too at lr 1e-4.

  (a) Lightning 2.x: a ``LightningModule`` with a ``backbone`` attribute (the encoder), AdamW over
      the parameters that require grad, ``BackboneFinetuning(unfreeze_backbone_at_epoch=--frozen,
      lambda_func=lambda e: 1.0)`` (its initial ratio 0.1 gives lr 1e-4; constant afterwards), CPU,
      no logger, checkpointing, progress bar or sanity check; Lightning freezes with
      ``requires_grad=False`` and leaves the frozen encoder's dropout on (it runs every step).
  (b) partwise: ``Trainer`` with a two-phase ``Plan`` (``decoder``, then ``decoder`` + ``encoder`` at
      1e-4), ``cache="auto"``: the frozen, eval-mode encoder's outputs are cached in the first phase
      (the build is inside its first epoch), and the cache is dropped when the encoder trains.

  (c) Lightning's own loop, as (a), with partwise's plan callback (``partwise.lightning.PartwisePlan``)
      in place of ``BackboneFinetuning`` and the same plan as (b): the frozen encoder runs every step
      (no cache), pinned to eval; the optimizer has a group per part from the start.

Method: the three run in threads of one process and take turns epoch by epoch (``bench/_interleave.py``),
one intra-op thread. Printed: seconds per epoch in each phase (medians; the frozen phase both with
and without its first epoch, which holds partwise's cache build), the phase totals, optimizer-state
bytes of the frozen parameters at the end of the frozen phase, whether the encoder stayed
bit-identical through it, and with ``--memory`` each one's peak resident memory run alone in a
subprocess. Targets (product brief): partwise >= 2x Lightning in the frozen phase, no slower after.

Lightning comes with the ``lightning`` extra (``make setup`` installs it)::

    .venv/bin/python bench/lightning_finetuning.py [--quick] [--memory]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).parent))
from _interleave import Gate, RssPeak, interleave, load_line, median, paired  # noqa: E402
from frozen_encoder import Setup as _Data  # noqa: E402

import partwise as pw  # noqa: E402
from partwise.seq2seq import PAD, Seq2SeqTask  # noqa: E402

LABELS = {"lightning": "(a) Lightning BackboneFinetuning", "partwise": "(b) partwise Trainer, cache auto",
          "partwise_lightning": "(c) Lightning + partwise callback"}


class Record:
    """What each run reports besides its epoch times."""

    def __init__(self) -> None:
        self.frozen_state_bytes: dict[str, int] = {}
        self.encoder_identical: dict[str, bool] = {}


def state_bytes_of(optimizers: list[torch.optim.Optimizer], params: list[nn.Parameter]) -> int:
    ids = {id(p) for p in params}
    return sum(v.numel() * v.element_size() for opt in optimizers for p, st in opt.state.items() if id(p) in ids
               for v in st.values() if isinstance(v, torch.Tensor))


def encoder_snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.encoder.state_dict().items()}


def same(model: nn.Module, snapshot: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(v, snapshot[k]) for k, v in model.encoder.state_dict().items())


class EpochBatches:
    """The batches of a ``BucketBatchSampler``, epoch ``e`` on the ``e``-th iteration, statelessly.

    Given the sampler itself, Lightning trained on no batch every other epoch: its loop stops
    iterating after the last batch, so the sampler (which resumes a partly consumed epoch) handed
    the next iteration the rest of the old epoch, which was empty.
    """

    def __init__(self, sampler: Any) -> None:
        self.sampler, self.epoch = sampler, 0

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Any:
        batches = self.sampler.batches(self.epoch)
        self.epoch += 1
        return iter(batches)


def lightning_fit(data: _Data, gate: Gate, args: argparse.Namespace, record: Record, key: str, model: nn.Module,
                  configure: Any, finetuning: Any, frozen_state_bytes: Any) -> None:
    """Lightning's loop on ``model`` with ``finetuning`` (a callback) and ``configure(module)`` as
    ``configure_optimizers``; ``frozen_state_bytes(trainer)`` is recorded at the end of the frozen phase."""
    import lightning.pytorch as L

    epochs = args.frozen + args.unfrozen
    snapshot = encoder_snapshot(model)

    class G2PModule(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model, self.backbone = model, model.encoder  # BackboneFinetuning needs `backbone`

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            logits = self.model(batch.src, batch.src_mask, batch.tgt_in)
            return nn.functional.cross_entropy(logits.flatten(0, 1), batch.tgt_out.flatten(), ignore_index=PAD)

        def configure_optimizers(self) -> Any:
            return configure(self)

        def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
            return batch.to(device)

    class Turns(L.Callback):
        done = 0

        def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
            self.done += 1
            if self.done == args.frozen:
                record.frozen_state_bytes[key] = frozen_state_bytes(trainer)
                record.encoder_identical[key] = same(model, snapshot)
            (gate.lap if self.done == epochs else gate.lap_and_start)()

    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        callbacks=[finetuning, Turns()])
    gate.start()
    loader = data.loader()
    loader = DataLoader(loader.dataset, batch_sampler=EpochBatches(loader.batch_sampler), collate_fn=loader.collate_fn)
    trainer.fit(G2PModule(), train_dataloaders=loader)


def run_lightning(data: _Data, gate: Gate, args: argparse.Namespace, record: Record) -> None:
    from lightning.pytorch.callbacks import BackboneFinetuning

    model = data.fresh()
    lightning_fit(
        data, gate, args, record, "lightning", model,
        configure=lambda module: torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-3,
                                                   weight_decay=0.01),
        finetuning=BackboneFinetuning(unfreeze_backbone_at_epoch=args.frozen, lambda_func=lambda epoch: 1.0),
        frozen_state_bytes=lambda trainer: state_bytes_of(trainer.optimizers, list(model.encoder.parameters())))


def plan(args: argparse.Namespace) -> pw.Plan:
    """The decoder alone, then the encoder too at 1/10 of the rate (AdamW, weight decay 0.01)."""
    return pw.Plan([
        pw.Phase("frozen", epochs=args.frozen, train={"decoder": 1e-3}, optimizer={"weight_decay": 0.01}),
        pw.Phase("unfrozen", epochs=args.unfrozen, train={"decoder": 1e-3, "encoder": 1e-4},
                 optimizer={"weight_decay": 0.01}),
    ])


def run_partwise(data: _Data, gate: Gate, args: argparse.Namespace, record: Record) -> None:
    epochs = args.frozen + args.unfrozen
    model = data.fresh()
    snapshot = encoder_snapshot(model)
    parts = pw.Parts(model)

    class Turns:
        done = 0

        def on_epoch_end(self, trainer: pw.Trainer, metrics: dict[str, Any]) -> None:
            self.done += 1
            if self.done == args.frozen:
                record.frozen_state_bytes["partwise"] = pw.state_bytes(trainer.optimizer, parts)["encoder"]
                record.encoder_identical["partwise"] = same(model, snapshot)
                if trainer.cache is None:
                    raise RuntimeError("partwise did not cache the frozen encoder")
            (gate.lap if self.done == epochs else gate.lap_and_start)()

    trainer = pw.Trainer(model, parts, plan(args), Seq2SeqTask(), device="cpu", cache="auto", callbacks=[Turns()])
    gate.start()
    trainer.fit(data.loader())


def run_partwise_lightning(data: _Data, gate: Gate, args: argparse.Namespace, record: Record) -> None:
    """Lightning's own loop with partwise's plan callback instead of BackboneFinetuning (no cache:
    the frozen encoder runs every step, pinned to eval)."""
    from partwise import lightning as pw_l

    model = data.fresh()
    parts = pw.Parts(model)
    plan_cb = pw_l.PartwisePlan(parts, plan(args))
    lightning_fit(data, gate, args, record, "partwise_lightning", model,
                  configure=lambda module: pw_l.plan_of(module).configure_optimizers(), finetuning=plan_cb,
                  frozen_state_bytes=lambda trainer: pw.state_bytes(plan_cb.driver.optimizer, parts)["encoder"])


RUNS = {"lightning": run_lightning, "partwise": run_partwise, "partwise_lightning": run_partwise_lightning}


def peak_rss(which: str, argv: list[str]) -> str:
    """Peak resident memory of a subprocess that runs only ``which``, the whole plan (after its data)."""
    out = subprocess.run([sys.executable, __file__, *argv, "--memory-of", which], check=True, capture_output=True,
                         text=True).stdout.strip().splitlines()[-1]
    m = json.loads(out)
    return f"peak RSS {m['peak_mib']:.0f} MiB in training, +{m['rise_mib']:.0f} over its start (alone)"


def report(t: dict[str, list[float]], args: argparse.Namespace, record: Record, memory: dict[str, str]) -> None:
    f, u = args.frozen, args.unfrozen
    frozen = {k: v[:f] for k, v in t.items()}
    steady = {k: v[1:f] for k, v in t.items()}
    after = {k: v[f:] for k, v in t.items()}
    for key, label in LABELS.items():
        mem = f"; {memory[key]}" if key in memory else ""
        print(f"{label:<34}: frozen phase {median(steady[key]):.3f} s/epoch after its first "
              f"(first {frozen[key][0]:.3f} s, phase total {sum(frozen[key]):.3f} s); unfrozen phase "
              f"{median(after[key]):.3f} s/epoch{mem}")
        print(f"{'':<34}  optimizer state of the frozen encoder at the end of the frozen phase: "
              f"{record.frozen_state_bytes[key]} B; encoder bit-identical through it: {record.encoder_identical[key]}")
    print(f"partwise vs Lightning, frozen phase (target >= 2x): {paired(steady['lightning'], steady['partwise']):.2f}x "
          f"per epoch after the first; {sum(frozen['lightning']) / sum(frozen['partwise']):.2f}x over the whole "
          f"phase ({f} epochs, cache build included)")
    print(f"partwise vs Lightning, unfrozen phase (target >= 1x): {paired(after['lightning'], after['partwise']):.2f}x "
          f"per epoch ({u} epochs)")
    print(f"Lightning + partwise callback vs BackboneFinetuning: frozen phase "
          f"{paired(steady['lightning'], steady['partwise_lightning']):.2f}x, unfrozen phase "
          f"{paired(after['lightning'], after['partwise_lightning']):.2f}x per epoch (same loop; no cache)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="10 batches, 4 encoder layers, 3 + 2 epochs")
    ap.add_argument("--batches", type=int, default=30, help="batches of 64 per epoch")
    ap.add_argument("--enc-layers", type=int, default=6)
    ap.add_argument("--frozen", type=int, default=5, help="epochs with the encoder frozen")
    ap.add_argument("--unfrozen", type=int, default=3, help="epochs after the unfreeze")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--memory", action="store_true", help="also measure each one's peak memory alone")
    ap.add_argument("--memory-of", choices=sorted(RUNS), help=argparse.SUPPRESS)
    args = ap.parse_args()
    argv = [a for a in sys.argv[1:] if a not in ("--memory",)]
    if args.quick:
        args.batches, args.enc_layers, args.frozen, args.unfrozen = 10, 4, 3, 2
    if args.frozen < 2 or args.unfrozen < 1:
        ap.error("--frozen must be >= 2 and --unfrozen >= 1")
    warnings.filterwarnings("ignore", module="lightning")
    torch.set_num_threads(args.threads)
    args.batch_size, args.repeats = 64, 1
    data = _Data(args)
    record = Record()
    epochs = args.frozen + args.unfrozen
    if args.memory_of:
        if args.memory_of == "lightning":
            import lightning.pytorch  # noqa: F401 - imported before the measurement, as partwise is
        with RssPeak() as rss:
            interleave({args.memory_of: lambda g: RUNS[args.memory_of](data, g, args, record)}, epochs, args.threads)
        print(json.dumps({"peak_mib": rss.peak_mib, "rise_mib": rss.peak_mib - rss.start_mib}))
        return
    import lightning

    load = os.getloadavg()[0]
    print(f"lightning_finetuning: lightning {lightning.__version__}, torch {torch.__version__}, "
          f"threads={args.threads}, "
          f"{args.batches} batches of 64 per epoch, encoder {args.enc_layers}x256, {args.frozen} frozen + "
          f"{args.unfrozen} unfrozen epochs; one process, alternated epoch by epoch")
    times = interleave({k: (lambda g, k=k: RUNS[k](data, g, args, record)) for k in RUNS}, epochs, args.threads)
    memory = {k: peak_rss(k, argv) for k in RUNS} if args.memory else {}
    print("seconds per epoch, in order: "
          + "; ".join(f"{k} " + " ".join(f"{x:.3f}" for x in v) for k, v in times.items()))
    report(times, args, record, memory)
    print(load_line(load))


if __name__ == "__main__":
    main()
