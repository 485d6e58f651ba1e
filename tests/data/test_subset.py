"""Seeded random training subsets: fair samples, nested by size, the same for every task kind."""

from __future__ import annotations

import pytest

from partwise import ConfigError
from partwise.cli._config import validate
from partwise.data import load_cmudict_splits, make_g2p_datasets, subset_indices
from partwise.recipe import get_kind

PLAN = [{"name": "a", "epochs": 1, "train": {"encoder": 1e-3, "decoder": 1e-3}}]


def test_subsets_are_seeded_sorted_nested_and_spread_over_the_split():
    small, large = subset_indices(100_000, size=500, seed=3), subset_indices(100_000, size=2000, seed=3)
    assert small == sorted(small) and len(set(small)) == 500 and set(small) <= set(large)
    assert small == subset_indices(100_000, size=500, seed=3) != subset_indices(100_000, size=500, seed=4)
    # not a prefix: the items come from the whole split (an alphabetical prefix would all be < 500)
    assert max(small) > 90_000 and min(small) < 10_000
    assert len(subset_indices(10, fraction=0.25)) == 3  # rounded up


@pytest.mark.parametrize("kw, message", [
    (dict(size=11), "size=11 is more than the 10 items"),
    (dict(size=0), "size=0 must be a whole number >= 1"),
    (dict(fraction=1.5), "fraction=1.5 must be a number in"),
    (dict(size=2, fraction=0.5), "exactly one of size or fraction"),
    (dict(), "exactly one of size or fraction"),
])
def test_bad_subsets_are_named(kw, message):
    with pytest.raises(ValueError, match=message):
        subset_indices(10, **kw)


def test_g2p_subset_keeps_whole_words_with_all_their_pronunciations():
    train = load_cmudict_splits()["train"]
    keep = subset_indices(len(train.words), size=300, seed=0)
    data = make_g2p_datasets(train_words=lambda words: keep)
    assert len(data.train) == sum(len(train.references[i]) for i in keep) > 300  # every pronunciation
    assert len(data.dev) == 6302  # dev and test stay whole


def _recipe(task: str, data: dict, model: str = "gru") -> object:
    plan = PLAN if task != "digits_cycle" else [{"name": "autoencoder", "epochs": 1,
                                                 "train": {"encoder": 1e-3, "decoder": 1e-3}}]
    raw = {"task": {"name": task, **({"args": {"encoder": "scratch"}} if task == "stress" else {})},
           "data": data, "model": {"name": model}, "plan": plan}
    if task == "digits_cycle":
        raw["training"] = {"best_metric": None}
    return validate(raw, "test")


@pytest.mark.parametrize("task, data, model, unit", [
    ("seq2seq", {"name": "cmudict"}, "gru", "words"),
    ("stress", {"name": "cmudict"}, "gru", "words"),
    ("digits_cycle", {"name": "digits"}, "mlp", "images"),
])
def test_every_task_kind_trains_on_the_same_seeded_subset(task, data, model, unit):
    recipe = _recipe(task, {**data, "subset": {"size": 200, "seed": 1}}, model)
    loaded = get_kind(task).load_data(recipe, None)
    total = "1,439" if task == "digits_cycle" else "107,146"
    assert loaded.extra["subset"] == f"200 of {total} training {unit} (data.subset seed 1)"
    assert len(loaded.dev) == {"seq2seq": 6302, "stress": 6298, "digits_cycle": 179}[task]  # dev untouched
    if task == "digits_cycle":
        assert len(loaded.train) == 200
    if task == "stress":  # the seeded subset of the training words (less the few without a primary stress)
        words = load_cmudict_splits(stress=True)["train"].words
        chosen = [words[i] for i in subset_indices(len(words), size=200, seed=1)]
        assert set(loaded.train.words) <= set(chosen) and len(loaded.train) >= 195


def test_pairs_subset_and_its_errors(tmp_path):
    train = tmp_path / "train.tsv"
    train.write_text("".join(f"w{i}\tx {i}\n" for i in range(50)), encoding="utf-8")
    recipe = _recipe("seq2seq", {"name": "pairs", "train": str(train), "dev": str(train),
                                 "subset": {"fraction": 0.1, "seed": 0}})
    loaded = get_kind("seq2seq").load_data(recipe, None)
    assert len(loaded.train) == 5 and loaded.extra["subset"] == "5 of 50 training pairs (data.subset seed 0)"
    too_big = _recipe("seq2seq", {"name": "pairs", "train": str(train), "dev": str(train), "subset": {"size": 80}})
    with pytest.raises(ConfigError, match="data.subset: subset size=80 is more than the 50 items"):
        get_kind("seq2seq").load_data(too_big, None)
    with pytest.raises(ConfigError, match="data.subset: give exactly one of size or fraction"):
        _recipe("seq2seq", {"name": "cmudict", "subset": {"seed": 2}})
