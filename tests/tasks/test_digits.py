"""The digits_cycle kind: a frozen encoder inside the loss (scenario S2) on scikit-learn's digits."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from partwise import ConfigError, Parts, StepContext, Trainer, grad_report
from partwise._train._cache import EncoderCache
from partwise.cli import main
from partwise.cli._build import build_parts, build_plan, trainer_kwargs
from partwise.cli._config import validate
from partwise.recipe import Recipe
from partwise.tasks._digits import (
    DigitsCycle,
    DigitsCycleKind,
    DigitsCycleTask,
    collate_digits,
    digits_splits,
)

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "digits_cycle.yaml"
CYCLE = StepContext(step=0, epoch=0, phase="cycle")
AUTOENCODER = StepContext(step=0, epoch=0, phase="autoencoder")


@pytest.fixture(autouse=True)
def one_thread() -> Any:
    """Tiny MLPs gain nothing from intra-op threads, and on a busy 2-core machine waiting for a
    second thread made these tests ten times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def splits() -> tuple[Any, Any, Any]:
    return digits_splits()


def recipe_of(**changes: Any) -> Recipe:
    raw: dict[str, Any] = {
        "seed": 0,
        "task": {"name": "digits_cycle"},
        "data": {"name": "digits"},
        "model": {"name": "mlp", "args": {"latent": 8, "hidden": 32, "dropout": 0.2}},
        "plan": [
            {"name": "autoencoder", "epochs": 3, "train": {"encoder": 5e-3, "decoder": 5e-3}},
            {"name": "cycle", "epochs": 3, "train": {"generator": 5e-3}},
        ],
        "training": {"batch_size": 64, "best_metric": None, "guard": True, "cache": "on"},
    }
    raw.update(changes)
    return validate(raw, "test")


def test_split_is_fixed_by_row_index_and_covers_every_image(splits):
    from sklearn.datasets import load_digits

    train, dev, test = splits
    images = load_digits().data
    ids = {name: set(ds.index.tolist()) for name, ds in zip(("train", "dev", "test"), splits, strict=True)}
    assert ids["train"] | ids["dev"] | ids["test"] == set(range(len(images)))
    assert sum(len(s) for s in ids.values()) == len(images)  # disjoint
    assert all(i % 10 == 9 for i in ids["test"]) and all(i % 10 == 8 for i in ids["dev"])
    assert len(dev) == len(test) == len(range(8, len(images), 10))
    pixels, index = test[5]  # an item carries its row of load_digits(), scaled to [0, 1]
    assert torch.allclose(pixels, torch.tensor(images[index], dtype=torch.float32) / 16)
    assert float(train.pixels.min()) == 0.0 and float(train.pixels.max()) == 1.0
    again = digits_splits()
    for a, b in zip(splits, again, strict=True):
        assert torch.equal(a.pixels, b.pixels) and torch.equal(a.index, b.index)


def test_limit_keeps_the_first_rows_of_each_split(splits):
    small = digits_splits(limit=7)
    for full, part in zip(splits, small, strict=True):
        assert torch.equal(part.index, full.index[:7])


def test_missing_scikit_learn_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match=r"pip install 'partwise\[digits\]'"):
        digits_splits()


def test_cycle_loss_reaches_generator_through_the_frozen_encoder(splits):
    torch.manual_seed(0)
    model = DigitsCycle(latent=8, hidden=32)
    parts = Parts(model)
    parts.freeze("encoder", "decoder")
    model.train()
    batch = collate_digits([splits[0][i] for i in range(16)])
    DigitsCycleTask().loss(model, batch, CYCLE).backward()
    report = grad_report(parts)
    assert report.received("generator") and report.norm("generator") > 0
    assert not report.received("encoder") and not report.received("decoder")


def test_autoencoder_phase_trains_encoder_and_decoder_only(splits):
    model = DigitsCycle(latent=8, hidden=32)
    parts = Parts(model)
    batch = collate_digits([splits[0][i] for i in range(16)])
    DigitsCycleTask(autoencoder_phases=["warmup"]).loss(model, batch, StepContext(0, 0, "warmup")).backward()
    report = grad_report(parts)
    assert report.received("encoder") and report.received("decoder") and not report.received("generator")


def test_cached_and_live_cycle_losses_agree(splits):
    torch.manual_seed(1)
    model = DigitsCycle(latent=8, hidden=32, dropout=0.5)
    parts = Parts(model)
    model.encoder(splits[0].pixels[:256])  # move BatchNorm statistics away from their initial values
    parts.freeze("encoder", "decoder")
    model.train()  # frozen BatchNorm and Dropout stay in eval mode
    task = DigitsCycleTask()
    cache = EncoderCache.build(task, model, splits[0], collate_digits, torch.device("cpu"), batch_size=100)
    batch = collate_digits([splits[0][i] for i in (900, 3, 417, 1200, 58)])
    cache.verify(model, batch, torch.device("cpu"))
    cached = task.loss_from_encoding(model, batch, cache.lookup(batch, torch.device("cpu")), CYCLE)
    live = task.loss(model, batch, CYCLE)
    assert torch.allclose(cached, live, rtol=1e-5, atol=1e-7)
    assert float(live.detach()) > 0


def test_evaluate_before_cycle_training_matches_the_untrained_generator(splits):
    model = DigitsCycle(latent=8, hidden=32, seed=3).eval()
    scores = DigitsCycleTask(seed=3).evaluate(model, [collate_digits([splits[1][i] for i in range(40)])])
    assert scores["cycle_loss"] == scores["untrained_cycle_loss"] > 0
    assert scores["pixel_mse"] == scores["untrained_pixel_mse"] > 0
    other = DigitsCycleTask(seed=4).evaluate(model, [collate_digits([splits[1][i] for i in range(40)])])
    assert other["untrained_pixel_mse"] != scores["pixel_mse"]


class _Watch:
    """Snapshots the encoder when the cycle phase starts, calls model.train() after every step,
    and records whether the frozen-encoder cache is in use during the cycle phase."""

    def __init__(self) -> None:
        self.at_cycle_start: dict[str, torch.Tensor] = {}
        self.cache_used: list[bool] = []

    def on_phase_start(self, trainer: Trainer, span: Any) -> None:
        if span.phase.name == "cycle":
            self.at_cycle_start = {k: v.clone() for k, v in trainer.model.encoder.state_dict().items()}

    def on_step_end(self, trainer: Trainer, logs: dict[str, Any]) -> None:
        trainer.model.train()
        if trainer.span.phase.name == "cycle":
            self.cache_used.append(trainer.cache is not None)


def test_two_phase_training_keeps_the_encoder_bit_identical(splits):
    recipe = recipe_of()
    kind = DigitsCycleKind()
    kind.check(recipe)
    data = kind.load_data(recipe, None)
    model = kind.build_model(recipe, data)
    initial = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    parts = build_parts(recipe, model)
    trainer = Trainer(model, parts, build_plan(recipe, parts), kind.build_task(recipe, data), **trainer_kwargs(recipe))
    watch = _Watch()
    trainer.callbacks = [watch]
    train_loader, dev_loader = kind.loaders(recipe, data)
    history = trainer.fit(train_loader, dev_loader)  # guard: true raises if a frozen tensor changed

    assert not torch.equal(initial["1.running_mean"], watch.at_cycle_start["1.running_mean"])  # BN trained in phase 0
    after = model.encoder.state_dict()
    assert watch.at_cycle_start.keys() == after.keys()
    for name, tensor in watch.at_cycle_start.items():
        assert torch.equal(tensor, after[name]), name
    assert watch.cache_used and all(watch.cache_used) and trainer.cache is not None
    first, last = history[0], history[-1]
    assert first["phase"] == "autoencoder" and last["phase"] == "cycle"
    assert first["dev_cycle_loss"] == first["dev_untrained_cycle_loss"]  # the generator waits for its phase
    assert last["dev_cycle_loss"] < 0.5 * last["dev_untrained_cycle_loss"]


def test_bad_recipes_are_reported_before_any_work():
    with pytest.raises(ConfigError) as e:  # the args schemas, when the recipe is read: all at once
        recipe_of(model={"name": "mlp", "args": {"latnet": 8, "hidden": "big"}},
                  task={"name": "digits_cycle", "args": {"autoencoder_phase": ["autoencoder"]}})
    text = str(e.value)
    assert "model.args.latnet: unknown key" in text and "model.args.hidden" in text
    assert "task.args.autoencoder_phase: unknown key" in text
    bad = recipe_of(data={"name": "cmudict"},
                    task={"name": "digits_cycle", "args": {"autoencoder_phases": ["autoencodr"]}})
    with pytest.raises(ConfigError) as e:
        DigitsCycleKind().check(bad)
    text = str(e.value)
    assert "data.name: 'cmudict'" in text and "'autoencodr'" in text
    with pytest.raises(ConfigError, match="model.args.latent: Input should be greater than or equal to 1"):
        recipe_of(model={"name": "mlp", "args": {"latent": 0}})


def test_shipped_recipe_trains_and_evaluates_from_the_cli(tmp_path, capsys):
    run = tmp_path / "run"
    code = main(["train", str(RECIPE), f"run_dir={run}", "plan.0.epochs=1", "plan.1.epochs=2"])
    assert code == 0
    assert main(["eval", str(run), "--split", "test"]) == 0
    out = capsys.readouterr().out
    assert "test: recon_mse" in out and "untrained_cycle_loss" in out
    assert (run / "checkpoints" / "latest").is_file()
