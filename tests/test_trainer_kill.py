"""The trainer's side of surviving a kill: checkpoints only where a resume can continue exactly, an
evaluation that leaves the training RNG alone, and ``best`` restored after a kill between pointers.

A kill is simulated in-process by raising at a fail point (see :mod:`partwise._run._failpoints`); the
files are then what a SIGKILL at that moment leaves (``tests/cli/test_kill_resume.py`` kills for real).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from partwise._run import _checkpoint, _failpoints
from test_trainer import dataset, make


class Killed(BaseException):
    """Stands for SIGKILL: nothing catches it, so the run stops where it was."""


def kill_at(monkeypatch, name: str, occurrence: int) -> None:
    """Make fail point ``name`` raise :class:`Killed` the ``occurrence``-th time it is reached."""
    seen = {"n": 0}

    def reached(point: str) -> None:
        if point == name:
            seen["n"] += 1
            if seen["n"] == occurrence:
                raise Killed(f"{name} #{occurrence}")

    monkeypatch.setattr(_failpoints, "reached", reached)


def dev_loader() -> DataLoader:
    """Held-out batches from a DataLoader without a generator: iterating it draws from torch's RNG."""
    return DataLoader(dataset(48), batch_size=16)


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_evaluation_does_not_perturb_the_training_rng():
    with_eval, _, trainer = make()
    trainer.fit(dataset(), dev_loader())
    without, _, trainer = make()
    trainer.fit(dataset())
    assert same(weights(with_eval), weights(without))


def test_no_checkpoint_is_written_between_an_epochs_last_step_and_its_evaluation(tmp_path, monkeypatch):
    written = []
    save = _checkpoint.save_checkpoint

    def record(root, name, model, parts, state, meta, **kw):
        written.append((state["step"], len(state["history"])))
        return save(root, name, model, parts, state, meta, **kw)

    monkeypatch.setattr(_checkpoint, "save_checkpoint", record)
    _, _, trainer = make(run_dir=tmp_path, save_every=5, best_metric=("loss", "min"))  # 5 steps per epoch
    trainer.fit(dataset(), dev_loader())
    assert written == [(5, 1), (10, 2), (15, 3), (20, 4)]  # once per epoch end, after its evaluation


@pytest.mark.parametrize(("point", "occurrence"), [
    ("epoch.evaluated", 2),  # epoch 2: its last step is done and logged, its evaluation not saved
    ("save.pointer", 1),  # epoch 1's checkpoint: latest switched, best not yet written
    ("save.pointer", 3),  # epoch 2's checkpoint (a better one): latest switched, best not yet
    ("save.state", 3),  # in the middle of writing epoch 2's checkpoint
    ("phase.entered", 2),  # phase 1 entered, nothing trained in it yet
])
def test_a_run_killed_and_resumed_ends_as_the_uninterrupted_one(tmp_path, monkeypatch, point, occurrence):
    ref_model, _, ref = make(run_dir=tmp_path / "ref", save_every=5, best_metric=("loss", "min"))
    ref.fit(dataset(), dev_loader())
    kill_at(monkeypatch, point, occurrence)
    _, _, trainer = make(run_dir=tmp_path / "run", save_every=5, best_metric=("loss", "min"))
    with pytest.raises(Killed):
        trainer.fit(dataset(), dev_loader())
    monkeypatch.undo()
    model, _, trainer = make(seed=99, run_dir=tmp_path / "run", save_every=5, best_metric=("loss", "min"))
    trainer.fit(dataset(), dev_loader(), resume=tmp_path / "run")
    assert same(weights(model), weights(ref_model))
    drop_seconds = [{k: v for k, v in m.items() if k != "seconds"} for m in trainer.history]
    assert drop_seconds == [{k: v for k, v in m.items() if k != "seconds"} for m in ref.history]
    for which in ("latest", "best"):
        a, b = (_checkpoint.resolve_checkpoint(r, which) for r in (tmp_path / "ref", tmp_path / "run"))
        assert a.name == b.name
        assert same(_checkpoint.read_part(a, "part-head.safetensors"),
                    _checkpoint.read_part(b, "part-head.safetensors"))
    assert not list((tmp_path / "run" / "checkpoints").glob(".*"))  # the killed save's temporaries are gone


def test_resuming_at_max_steps_writes_no_second_checkpoint_of_that_step(tmp_path):
    _, _, trainer = make(run_dir=tmp_path)
    trainer.fit(dataset(), max_steps=7)
    meta = tmp_path / "checkpoints" / "step-00000007" / "meta.json"
    written = meta.stat().st_mtime_ns
    _, _, trainer = make(run_dir=tmp_path)
    trainer.fit(dataset(), resume=tmp_path, max_steps=7)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "step-00000007"]
    assert meta.stat().st_mtime_ns == written  # not rewritten

