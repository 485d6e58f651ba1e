"""Checkpoint loading is complete or refused: both directions, shapes and dtypes, every mismatch listed;
partial loads only when asked; damaged files are a CheckpointError; tied targets are not overwritten."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

import partwise as pw
from partwise._run._checkpoint import load_state, remove_debris, save_checkpoint


def net(norm: bool = False) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Module()
    model.encoder = nn.Sequential(nn.Linear(4, 8), *([nn.BatchNorm1d(8)] if norm else []))
    model.decoder = nn.Linear(8, 3)
    return model


def saved(tmp_path, model: nn.Module):
    return save_checkpoint(tmp_path, "step-1", model, pw.Parts(model), {}, {})


def test_a_checkpoint_missing_a_batchnorm_is_refused_listing_every_tensor(tmp_path):
    ckpt = saved(tmp_path, net(norm=False))
    model = net(norm=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(pw.CheckpointError, match="5 problem") as e:
        pw.load_weights(model, pw.Parts(model), ckpt)
    assert sorted(e.value.problems) == sorted(
        f"encoder.1.{k} (part 'encoder') is missing from the checkpoint"
        for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # untouched


def test_unexpected_tensors_and_dtypes_are_mismatches_too(tmp_path):
    ckpt = saved(tmp_path, net(norm=True))
    small = net(norm=False).double()
    with pytest.raises(pw.CheckpointError) as e:
        pw.load_weights(small, pw.Parts(small), ckpt)
    problems = e.value.problems
    assert "encoder.0.weight: checkpoint dtype torch.float32 vs model torch.float64" in problems
    assert "encoder.1.running_mean is in the checkpoint but not in the model" in problems


def test_strict_false_loads_what_fits_and_reports_the_rest(tmp_path):
    source = net(norm=False)
    ckpt = saved(tmp_path, source)
    model = net(norm=True)
    with torch.no_grad():
        model.decoder.weight.zero_()
    with pytest.warns(RuntimeWarning, match=r"not loaded \(5\): encoder.1.weight \(part 'encoder'\) is missing"):
        pw.load_weights(model, pw.Parts(model), ckpt, strict=False)
    assert torch.equal(model.decoder.weight, source.decoder.weight)


def test_loading_only_some_parts_checks_those_parts_completely(tmp_path):
    ckpt = saved(tmp_path, net(norm=False))
    model = net(norm=True)
    assert pw.load_weights(model, pw.Parts(model), ckpt, only=["decoder"]) == ["decoder"]
    with pytest.raises(pw.CheckpointError, match="encoder.1.running_var"):
        pw.load_weights(model, pw.Parts(model), ckpt, only=["encoder"])


def test_a_damaged_checkpoint_is_a_checkpoint_error(tmp_path):
    ckpt = saved(tmp_path, net())
    (ckpt / "part-decoder.safetensors").write_bytes(b"\x00garbage")
    model = net()
    with pytest.raises(pw.CheckpointError, match="part-decoder.safetensors cannot be read.*damaged"):
        pw.load_weights(model, pw.Parts(model), ckpt)
    (ckpt / "state.pt").write_bytes(b"not a torch file")
    with pytest.raises(pw.CheckpointError, match="state.pt' cannot be read"):
        load_state(ckpt)
    with pytest.raises(pw.CheckpointNotFound):
        pw.load_weights(model, pw.Parts(model), tmp_path / "nowhere")


def test_a_part_name_that_cannot_name_a_file_is_refused_before_writing(tmp_path):
    model = net()
    parts = pw.Parts(model, {"enc/dec": ["encoder", "decoder"]})
    with pytest.raises(pw.CheckpointError, match="part name 'enc/dec' cannot name a checkpoint file"):
        save_checkpoint(tmp_path, "step-1", model, parts, {}, {})
    assert not any(tmp_path.iterdir())


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(5, 4)
        self.out = nn.Linear(4, 5, bias=False)
        self.out.weight = self.embed.weight  # one tensor under two names


def test_transfer_state_warns_when_two_source_tensors_map_onto_one_tied_target():
    target = Tied()
    source = {"embed.weight": torch.ones(5, 4), "out.weight": torch.zeros(5, 4)}
    with pytest.warns(RuntimeWarning, match=r"one tied tensor.*copied 'embed.weight' only"):
        report = pw.transfer_state(source, target)
    assert torch.equal(target.embed.weight, torch.ones(5, 4))  # the first name, not whichever came last
    assert report.copied == ("embed.weight",)
    agreeing = {"embed.weight": torch.ones(5, 4), "out.weight": torch.ones(5, 4)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # equal values for a tied target: nothing to warn about
        report = pw.transfer_state(agreeing, Tied())
    assert report.copied == ("embed.weight", "out.weight")



# -- surviving a kill: debris and pointers ------------------------------------------------------
def _dead_pid() -> int:
    """The pid of a process that has exited."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_temporaries_of_dead_writers_are_removed_and_those_of_live_ones_kept(tmp_path):
    dead, live = _dead_pid(), os.getpid()
    for name in (f".step-00000003.tmp-{dead}", f".step-00000003.old-{dead}", f".step-00000006.tmp-{live}"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "state.pt").write_bytes(b"half")
    for name in (f".latest.tmp-{dead}", f".metrics.csv.tmp-{dead}", f".loss.tmp-{dead}.png", "notes.tmp-1", "step-1"):
        (tmp_path / name).write_text("x")
    removed = remove_debris(tmp_path)
    assert sorted(removed) == sorted([f".step-00000003.tmp-{dead}", f".step-00000003.old-{dead}",
                                      f".latest.tmp-{dead}", f".metrics.csv.tmp-{dead}", f".loss.tmp-{dead}.png"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f".step-00000006.tmp-{live}", "notes.tmp-1", "step-1"])


def test_a_resave_under_the_name_latest_names_never_leaves_latest_without_a_checkpoint(tmp_path, monkeypatch):
    model = net()
    parts = pw.Parts(model)
    save_checkpoint(tmp_path, "step-00000003", model, parts, {"v": 1}, {}, pointers=("latest", "best"))
    checked = []

    def pointers_complete(*_: object) -> None:
        for which in ("latest", "best"):
            name = (tmp_path / which).read_text().strip()
            assert (tmp_path / name / "meta.json").is_file(), f"{which} names {name}, which is not complete"
        checked.append(1)

    replace, rmtree = os.replace, shutil.rmtree
    monkeypatch.setattr(os, "replace", lambda a, b: (pointers_complete(), replace(a, b), pointers_complete()))
    monkeypatch.setattr(shutil, "rmtree", lambda p, **kw: (pointers_complete(), rmtree(p, **kw), pointers_complete()))
    with torch.no_grad():
        model.decoder.weight.add_(1.0)
    new = save_checkpoint(tmp_path, "step-00000003", model, parts, {"v": 2}, {})  # latest moves, best stays
    assert len(checked) >= 6
    assert new.name == "step-00000003.1" and (tmp_path / "latest").read_text() == "step-00000003.1"
    assert (tmp_path / "best").read_text() == "step-00000003" and load_state(tmp_path / "step-00000003")["v"] == 1
    assert load_state(new)["v"] == 2
    monkeypatch.undo()
    again = save_checkpoint(tmp_path, "step-00000003", model, parts, {"v": 3}, {}, pointers=("latest", "best"))
    assert again.name == "step-00000003.2"  # best named step-00000003 and latest .1 until now...
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best", "latest", "step-00000003.2"]  # ...both are gone


def _one_checkpoint(root, name: str, step: int):
    from partwise._run import _checkpoint as ck

    m = nn.Sequential(nn.Linear(2, 2))
    return m, pw.Parts(m), ck.save_checkpoint(root, name, m, pw.Parts(m), {}, {"step": step})


@pytest.mark.parametrize("pointer", ["../../../elsewhere/checkpoints/step-9", "/etc", "..", "sub/step-9"])
def test_a_pointer_naming_anything_but_a_checkpoint_beside_it_is_refused(tmp_path, pointer):
    _one_checkpoint(tmp_path / "elsewhere" / "checkpoints", "step-9", 9)
    model, parts, _ = _one_checkpoint(tmp_path / "runs" / "a" / "checkpoints", "step-1", 1)
    (tmp_path / "runs" / "a" / "checkpoints" / "latest").write_text(pointer)
    for follow in (lambda: pw.resolve_checkpoint(tmp_path / "runs" / "a"),
                   lambda: pw.load_weights(model, parts, tmp_path / "runs" / "a")):
        with pytest.raises(pw.CheckpointError, match="not the name of a checkpoint folder beside it"):
            follow()


def test_a_part_file_outside_its_checkpoint_is_refused(tmp_path):
    import json

    _, _, other = _one_checkpoint(tmp_path / "elsewhere", "step-9", 9)
    model, parts, ckpt = _one_checkpoint(tmp_path / "b", "step-2", 2)
    meta = json.loads((ckpt / "meta.json").read_text())
    meta["parts"] = {k: str(other / v) for k, v in meta["parts"].items()}  # absolute paths elsewhere
    (ckpt / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(pw.CheckpointError, match="not files inside the checkpoint folder"):
        pw.load_weights(model, parts, ckpt)


def test_a_kill_while_pruning_never_leaves_a_torn_checkpoint_under_its_visible_name(tmp_path, monkeypatch):
    """Pruning used to ``rmtree`` the visible ``step-…`` folder: a kill midway left it without
    ``meta.json``, and no later start removed it. A kill inside the delete is simulated by removing
    ``meta.json`` first and then raising, as ``rmtree`` killed after its first file would leave it."""
    from partwise._run import _checkpoint

    model = net()
    for step in (1, 2):
        save_checkpoint(tmp_path, f"step-{step:08d}", model, pw.Parts(model), {}, {}, keep=5)

    real_rmtree = shutil.rmtree

    def killed_rmtree(path, ignore_errors=False):
        if not (path / "meta.json").is_file():  # the writer's own temporary: deleted as usual
            return real_rmtree(path, ignore_errors=ignore_errors)
        (path / "meta.json").unlink()
        raise KeyboardInterrupt("killed while deleting")

    monkeypatch.setattr(_checkpoint.shutil, "rmtree", killed_rmtree)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, "step-00000003", model, pw.Parts(model), {}, {}, keep=1)
    visible = [d for d in tmp_path.iterdir() if d.is_dir() and not d.name.startswith(".")]
    assert visible and all((d / "meta.json").is_file() for d in visible), sorted(d.name for d in visible)
    assert any(d.name.startswith(".step-00000001.old-") for d in tmp_path.iterdir())  # debris, hidden


def test_a_torn_checkpoint_folder_under_a_visible_name_is_removed_at_the_next_start(tmp_path):
    model = net()
    good = save_checkpoint(tmp_path, "step-00000002", model, pw.Parts(model), {}, {})
    torn = tmp_path / "step-00000001"
    torn.mkdir()
    (torn / "part-encoder.safetensors").write_bytes(b"half")
    (tmp_path / "notes").mkdir()  # not a checkpoint name: left alone
    assert remove_debris(tmp_path) == ["step-00000001"]
    assert not torn.exists() and good.exists() and (tmp_path / "notes").exists()
