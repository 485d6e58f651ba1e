"""Checkpoint averaging: the exact mean of a run's last checkpoints, chosen as best only when it scores better."""

from __future__ import annotations

import pytest
import torch

import partwise as pw
from partwise._run import _checkpoint
from test_trainer import dataset, make


def _weights(ckpt) -> dict[str, torch.Tensor]:
    meta = _checkpoint.read_meta(ckpt)
    out: dict[str, torch.Tensor] = {}
    for fname in meta["parts"].values():
        out.update(_checkpoint.read_part(ckpt, fname))
    return out


def test_average_is_the_mean_of_floats_and_the_last_of_integer_buffers(tmp_path):
    _, _, trainer = make(run_dir=tmp_path, best_metric=("loss", "min"), average_last=3)
    trainer.fit(dataset(), dataset(60))
    ends = pw.epoch_end_checkpoints(tmp_path / "checkpoints")
    assert [p.name for p in ends] == ["step-00000010", "step-00000015", "step-00000020"]  # 4 epochs, last 3 kept
    out = pw.average_checkpoints(ends, tmp_path / "mean")
    got, each = _weights(out), [_weights(p) for p in ends]
    for key, t in got.items():
        if t.is_floating_point():
            assert torch.allclose(t, sum(w[key].double() for w in each).div(3).to(t.dtype)), key
        else:  # BatchNorm's num_batches_tracked: the last checkpoint's
            assert torch.equal(t, each[-1][key]), key
    assert _checkpoint.read_meta(out)["averaged_from"] == [p.name for p in ends]


def test_checkpoints_of_different_models_are_refused_before_anything_is_written(tmp_path):
    _, _, a = make(run_dir=tmp_path / "a", best_metric=("loss", "min"), average_last=2)
    a.fit(dataset(), dataset(60), max_steps=10)
    first = pw.epoch_end_checkpoints(tmp_path / "a" / "checkpoints")[-1]
    model, parts, _ = make()
    model.head[-1] = torch.nn.Linear(24, 5)  # another head: shapes differ
    parts = pw.Parts(model)
    other = _checkpoint.save_checkpoint(tmp_path / "b", "step-1", model, parts, {}, {"step": 1})
    with pytest.raises(pw.CheckpointError, match=r"head\.3\.weight has shape \(5, 24\)"):
        pw.average_checkpoints([first, other], tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(pw.CheckpointError, match="at least two"):
        pw.average_checkpoints([first], tmp_path / "out")


def test_trainer_makes_the_average_best_only_when_it_beats_the_best_epoch(tmp_path):
    model, _, trainer = make(run_dir=tmp_path, best_metric=("loss", "min"), average_last=3)
    history = trainer.fit(dataset(), dataset(60))
    final = {k: v.clone() for k, v in model.state_dict().items()}
    found = trainer.averaged
    assert found is not None and found["from"] == ["step-00000010", "step-00000015", "step-00000020"]
    best_epoch = min(h["dev_loss"] for h in history)
    best = pw.resolve_checkpoint(tmp_path, "best").name
    assert found["chosen"] == (found["dev_loss"] < best_epoch)
    best_step = min(history, key=lambda h: h["dev_loss"])["step"]
    assert best == ("averaged" if found["chosen"] else f"step-{best_step:08d}")
    # the model keeps the weights it trained to; the average lives only in the checkpoint
    assert all(torch.equal(final[k], v) for k, v in model.state_dict().items())
    # the average's recorded dev loss is what evaluating those weights gives
    pw.load_weights(model, trainer.parts, tmp_path / "checkpoints" / "averaged")
    model.eval()
    with torch.no_grad():  # the trainer's dev loss: the mean of its batches' (24, 24, 12 items)
        x, y = dataset(60).tensors
        losses = [torch.nn.functional.cross_entropy(model(x[i:i + 24]), y[i:i + 24]).item() for i in (0, 24, 48)]
    assert sum(losses) / 3 == pytest.approx(found["dev_loss"], rel=1e-5)


def test_average_beats_a_worse_best_and_loses_to_a_better_one(tmp_path):
    _, _, trainer = make(run_dir=tmp_path, best_metric=("loss", "min"), average_last=2)
    trainer.fit(dataset(), dataset(60))
    value = trainer.averaged["dev_loss"]
    trainer.best = value - 1.0  # a best epoch better than the average: best stays where it was
    before = pw.resolve_checkpoint(tmp_path, "best").name
    assert trainer.consider_average(dataset(60))["chosen"] is False
    assert pw.resolve_checkpoint(tmp_path, "best").name == before
    trainer.best = value + 1.0
    assert trainer.consider_average(dataset(60))["chosen"] is True
    assert pw.resolve_checkpoint(tmp_path, "best").name == "averaged"


@pytest.mark.parametrize("kw, message", [
    (dict(average_last=1), "average_last: 1 must be a whole number >= 2"),
    (dict(average_last=True), "average_last: True must be"),
    (dict(average_last=3, best_metric=None), "needs run_dir"),
])
def test_average_last_is_checked_before_training(tmp_path, kw, message):
    kw = {"run_dir": tmp_path, "best_metric": ("loss", "min"), **kw}
    with pytest.raises(pw.ConfigError, match=message):
        make(**kw)
    assert not (tmp_path / "checkpoints").exists()


def test_deciding_again_reuses_the_average_and_a_newer_average_replaces_the_old(tmp_path):
    _, _, trainer = make(run_dir=tmp_path, best_metric=("loss", "min"), average_last=3)
    trainer.fit(dataset(), dataset(60))
    root = tmp_path / "checkpoints"
    written = (root / "averaged" / "meta.json").stat().st_mtime_ns
    first = dict(trainer.averaged)
    trainer.best = first["dev_loss"] + 1.0  # the average wins: best names it
    assert trainer.consider_average(dataset(60))["chosen"] and (root / "averaged" / "meta.json").stat().st_mtime_ns \
        == written  # the same checkpoints: the average on disk is reused, not written again
    assert pw.resolve_checkpoint(tmp_path, "best").name == "averaged"
    trainer.average_last = 2  # other checkpoints: a new average beside the one best names, then it replaces it
    trainer.best = 1e9
    found = trainer.consider_average(dataset(60))
    assert found["checkpoint"] == "averaged.1" and found["chosen"] and found["from"] == first["from"][1:]
    assert sorted(p.name for p in root.iterdir() if p.name.startswith("averaged")) == ["averaged.1"]


def test_mid_epoch_saves_do_not_push_out_the_epoch_ends_averaged(tmp_path):
    # 5 steps per epoch, a save every 2 steps: mid-epoch checkpoints must not count against average_last
    _, _, trainer = make(run_dir=tmp_path, best_metric=("loss", "min"), average_last=3, save_every=2)
    trainer.fit(dataset(), dataset(60))
    assert trainer.averaged is not None
    assert trainer.averaged["from"] == ["step-00000010", "step-00000015", "step-00000020"]
    kept = sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.is_dir())
    assert {"step-00000010", "step-00000015", "step-00000020"} <= set(kept)
    assert "step-00000018" not in kept  # an older mid-epoch save is still pruned
