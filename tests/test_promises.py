"""Promises that hold across registries, copies, processes and changed data (each test failed before its fix)."""

from __future__ import annotations

import copy
import gc
import io
import os
import pickle
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import partwise as pw


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8))
        self.dec = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dec(self.enc(x))


def loss(model: nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)


def data(n: int = 48, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    return TensorDataset(x, (x[:, 0] > 0).long())


PLAN = pw.Plan([pw.Phase("both", epochs=2, train={"enc": 1e-1, "dec": 1e-1})])


def test_a_dropped_registry_releases_what_it_held():  # hole 1
    model = Net()
    parts = pw.Parts(model)
    parts.freeze("enc")
    del parts
    gc.collect()
    assert all(p.requires_grad for p in model.enc.parameters())
    again = pw.Parts(model)
    before = model.enc[0].weight.detach().clone()
    opt = pw.build_optimizer(again, default={"lr": 0.5})
    assert any(p is model.enc[0].weight for g in opt.param_groups for p in g["params"])
    loss(model, data()[:8]).backward()
    opt.step()
    assert not torch.equal(before, model.enc[0].weight)  # before: the held part never moved


def test_a_part_frozen_by_another_registry_is_refused_not_skipped():  # hole 2
    model = Net()
    first = pw.Parts(model)
    first.freeze("enc")
    second = pw.Parts(model)
    assert second.held_elsewhere("enc")
    assert "frozen elsewhere" in second.table()
    with pytest.raises(pw.PartwiseError, match="part 'enc' is to train, but .* held frozen by another Parts"):
        pw.Trainer(model, second, PLAN, loss, batch_size=16).fit(data())
    del first


@pytest.mark.parametrize("how", ["deepcopy", "pickle", "torch.save"])
def test_a_copy_of_a_frozen_model_is_not_frozen(how):  # hole 3
    model = Net()
    registry = pw.Parts(model)  # kept alive: a dropped registry releases its holds at a collection
    registry.freeze("enc")
    if how == "deepcopy":
        clone = copy.deepcopy(model)
    elif how == "pickle":
        clone = pickle.loads(pickle.dumps(model))
    else:
        buf = io.BytesIO()
        torch.save(model, buf)
        buf.seek(0)
        clone = torch.load(buf, weights_only=False)
    clone.train()
    assert clone.enc[1].training  # before: the copy's BatchNorm stayed pinned to eval
    with pytest.warns(UserWarning, match="cop"):
        parts = pw.Parts(clone)  # adopts the switched-off parameters of the copy
    assert all(p.requires_grad for p in clone.enc.parameters())
    PLAN.check(parts)  # before: "created with requires_grad=False"
    assert not any(p.requires_grad for p in model.enc.parameters())  # the original stays frozen


def test_untie_of_a_frozen_tied_tensor_gives_a_trainable_copy():  # hole 4
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(5, 3)
            self.head = nn.Linear(3, 5, bias=False)
            self.head.weight = self.embed.weight

    model = Tied()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the head is reached through the embedding: reported, not an error
        frozen = pw.Parts(model, {"embed": "embed"})
    frozen.freeze("embed")
    pw.untie(model, "head")
    assert model.head.weight is not model.embed.weight
    assert model.head.weight.requires_grad  # before: a copy that nobody held and nothing could unfreeze
    assert not model.embed.weight.requires_grad  # the original stays frozen


def test_loss_with_a_cut_gradient_is_named():  # hole 6
    def cut(model: nn.Module, batch) -> torch.Tensor:
        x, y = batch
        with torch.no_grad():
            logits = model(x)
        return nn.functional.cross_entropy(logits, y)

    model = Net()
    trainer = pw.Trainer(model, pw.Parts(model), PLAN, cut, batch_size=16)
    with pytest.raises(pw.ConfigError, match="does not require grad"):
        trainer.fit(data())


@pytest.mark.parametrize("change", ["contents", "rows", "batch_size", "seed"])
def test_resume_refuses_changed_data_or_settings(tmp_path, change):  # hole 7
    def run(ds, batch_size=16, seed=0, **fit):
        torch.manual_seed(0)
        model = Net()
        trainer = pw.Trainer(model, pw.Parts(model), PLAN, loss, batch_size=batch_size, seed=seed,
                             run_dir=tmp_path / "run")
        return trainer.fit(ds, **fit)

    run(data(), max_steps=2)
    other = {"contents": dict(ds=data(seed=1)), "rows": dict(ds=data(47)),
             "batch_size": dict(ds=data(), batch_size=17), "seed": dict(ds=data(), seed=5)}[change]
    with pytest.raises(pw.ConfigError, match="allow_data_change"):
        run(**other, resume=tmp_path / "run")  # before: all four resumed silently
    with pytest.warns(RuntimeWarning, match="changed training data"):
        run(**other, resume=tmp_path / "run", allow_data_change=True)


def test_plan_fingerprint_is_the_same_in_every_process():  # hole 8
    code = ("import json, partwise as pw; from partwise._optim._fingerprint import plan_fingerprint;"
            "p = pw.Plan([pw.Phase('a', epochs=1, train={'dec': 1e-3}, task_options={'tags': {'x', 'y', 'z', 'w'}})]);"
            "print(json.dumps(plan_fingerprint(p, 3), sort_keys=True))")
    seen = set()
    for seed in ("0", "1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        seen.add(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                check=True).stdout)
    assert len(seen) == 1  # before: a set's repr followed the hash seed


def test_uneven_global_batch_is_known_before_step_one():  # hole 9
    from partwise._train._loader import make_loader, uneven_split

    loader = make_loader(data(47), batch_size=16, shuffle=True, seed=0)
    assert "holds 15 rows, which do not split evenly over 2 ranks" in uneven_split(loader, world=2, epochs=1)
    assert uneven_split(make_loader(data(48), batch_size=16, shuffle=True, seed=0), world=2, epochs=1) is None
