"""The ``stress`` task kind: labels from CMUdict, the retargeted model, its loss, the encoder cache,
and a tiny end-to-end CLI run."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import yaml

from partwise import Parts
from partwise._errors import ConfigError
from partwise._run._checkpoint import save_checkpoint
from partwise._train._cache import EncoderCache
from partwise.cli import main
from partwise.cli._config import validate
from partwise.data import G2PSplit, Vocab, load_cmudict
from partwise.pretrained import G2P_EN_GRAPHEMES
from partwise.recipe import KindData
from partwise.seq2seq import GRUEncoder, gru_seq2seq
from partwise.tasks import (
    StressDataset,
    StressKind,
    StressTask,
    collate_stress,
    stress_model,
    word_stress_labels,
)

needs_g2p_en = pytest.mark.skipif(importlib.util.find_spec("g2p_en") is None, reason="g2p-en is not installed")
RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "retarget_stress.yaml"
GRAPHEMES = Vocab(G2P_EN_GRAPHEMES[3:])
PLAN = [{"name": "frozen", "steps": 2, "train": {"decoder": 1e-3}}]


@pytest.fixture(scope="module")
def train_split() -> G2PSplit:
    return load_cmudict("train", stress=True)


def recipe(**task_args: object) -> object:
    return validate({"task": {"name": "stress", "args": task_args}, "model": {"name": "gru"}, "plan": PLAN}, "test")


def refs(split: G2PSplit, word: str) -> list[list[str]]:
    return split.references[split.words.index(word)]


def test_labels_follow_the_dictionary(train_split):
    assert refs(train_split, "about")[0] == ["AH0", "B", "AW1", "T"]
    assert word_stress_labels(refs(train_split, "about")) == (1, 2)  # AW1: second of two vowels
    assert refs(train_split, "banana")[0] == ["B", "AH0", "N", "AE1", "N", "AH0"]
    assert word_stress_labels(refs(train_split, "banana")) == (1, 3)
    # "a": the first pronunciation (AH0) has no primary stress, the next one (EY1) does
    assert refs(train_split, "a")[:2] == [["AH0"], ["EY1"]]
    assert word_stress_labels(refs(train_split, "a")) == (0, 1)


def test_long_words_are_clipped_and_unstressed_words_dropped(train_split):
    pron = refs(train_split, "deinstitutionalization")[0]
    vowels = [p for p in pron if p[-1].isdigit()]
    assert len(vowels) == 9 and vowels[7] == "EY1"  # D IY2 IH2 N S T IH0 T UW2 SH AH0 N AH0 L AH0 Z EY1 ...
    assert word_stress_labels([pron], max_syllables=8) == (7, 8)
    assert word_stress_labels([pron], max_syllables=4) == (3, 4)
    assert refs(train_split, "antipode") and all(  # no primary stress in any pronunciation
        not p.endswith("1") for pron in refs(train_split, "antipode") for p in pron)
    words = ["about", "antipode", "banana"]
    split = G2PSplit("x", words, [refs(train_split, w) for w in words])
    ds = StressDataset.from_split(split, GRAPHEMES)
    assert ds.words == ["about", "banana"]
    assert ds.stress.tolist() == [1, 1] and ds.syllables.tolist() == [2, 3]
    index, src, _, _ = ds[0]
    assert index == 0 and GRAPHEMES.decode(src) == list("about") and src[-1].item() == 3  # EOS


def test_model_shapes_and_parts():
    model = stress_model(30, hidden=32, max_syllables=6)
    assert isinstance(model.encoder, GRUEncoder)
    assert model.encoder.embed.weight.shape == (30, 256) and model.encoder.rnn.hidden_size == 256
    batch = collate_stress([StressDataset(["ab", "abcde"], [0, 1], [1, 2], GRAPHEMES)[i] for i in range(2)])
    logits = model(batch.src, batch.src_mask)
    assert logits.stress.shape == (2, 6) and logits.syllables.shape == (2, 6)
    assert model.decoder.stress_out.out_features == 6 and model.decoder.count_out.out_features == 6
    assert Parts(model).names == ["encoder", "decoder"]


@needs_g2p_en
def test_g2p_en_encoder_is_copied_exactly():
    from partwise.pretrained import load_g2p_en

    data = KindData(None, None, None, {"vocab": GRAPHEMES, "majority": {"stress": 0, "syllables": 2}})
    model = StressKind().build_model(recipe(encoder="g2p_en"), data)
    reference = load_g2p_en().model.encoder.state_dict()
    assert model.encoder.state_dict().keys() == reference.keys()
    assert all(torch.equal(model.encoder.state_dict()[k], v) for k, v in reference.items())
    scratch = StressKind().build_model(recipe(encoder="scratch"), data)
    assert not torch.equal(scratch.encoder.rnn.weight_hh_l0, reference["rnn.weight_hh_l0"])


def tiny_batch() -> object:
    words = ["about", "banana", "cat", "potato", "elephant", "a", "tomorrow", "important"]
    stress, syllables = [1, 1, 0, 1, 0, 0, 1, 1], [2, 3, 1, 3, 3, 1, 3, 3]
    ds = StressDataset(words, stress, syllables, GRAPHEMES)
    return collate_stress([ds[i] for i in range(len(ds))])


def test_loss_decreases():
    torch.manual_seed(0)
    model, task, batch = stress_model(30, hidden=32, dropout=0.0), StressTask(), tiny_batch()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        loss = task.loss(model, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    scores = task.evaluate(model.eval(), [batch])
    assert scores["stress_acc"] == scores["syllables_acc"] == scores["both_acc"] == 1.0
    # majority baselines: stress index 0 for 3 of 8 words, 2 syllables for 1 of 8 words
    assert scores["majority_stress_acc"] == 3 / 8 and scores["majority_syllables_acc"] == 1 / 8


def test_cache_protocol_round_trips():
    torch.manual_seed(0)
    model, task, batch = stress_model(30, hidden=32).eval(), StressTask(), tiny_batch()
    memory = task.encode(model, batch)
    merged = task.merge_encoding(task.split_encoding(memory, batch), batch)
    assert torch.equal(merged.states, memory.states) and torch.equal(merged.mask, memory.mask)
    assert torch.equal(merged.final, memory.final)
    assert torch.equal(task.loss_from_encoding(model, batch, merged), task.loss(model, batch))
    # and through the trainer's cache, rows looked up in another order
    words = ["about", "banana", "cat", "potato", "elephant"]
    ds = StressDataset(words, [1, 1, 0, 1, 0], [2, 3, 1, 3, 3], GRAPHEMES)
    for p in model.encoder.parameters():
        p.requires_grad_(False)
    cache = EncoderCache.build(task, model, ds, collate_stress, torch.device("cpu"), batch_size=2)
    shuffled = collate_stress([ds[i] for i in (4, 0, 2)])
    cached = cache.lookup(shuffled, torch.device("cpu"))
    live = task.encode(model, shuffled)
    # equal up to float rounding: a GRU over another batch composition may round differently
    torch.testing.assert_close(cached.states, live.states)
    torch.testing.assert_close(cached.final, live.final)


def test_bad_encoder_value_is_named():
    with pytest.raises(ConfigError, match=r"task\.args\.encoder: 'pretrained' is not 'g2p_en', 'scratch'"):
        StressKind().check(recipe(encoder="pretrained"))
    with pytest.raises(ConfigError, match=r"task\.args\.max_syllables: Input should be greater than or equal to 2"):
        recipe(max_syllables=1)  # the args schema, when the recipe is read
    with pytest.raises(ConfigError, match=r"task\.args\.encoders: unknown key; keys are encoder, max_syllables"):
        recipe(encoders="scratch")
    with pytest.raises(ConfigError, match=r"model\.args\.hidden: Input should be a valid integer"):
        validate({"task": {"name": "stress"}, "model": {"name": "gru", "args": {"hidden": "big"}}, "plan": PLAN}, "t")


def fake_g2p_run(run: Path, config_args: dict | None = None, **model_args: object) -> torch.nn.Module:
    """A partwise G2P run directory: config.yaml, artifacts.json with its vocabularies and one checkpoint."""
    src, tgt = Vocab(list("abcdefghijklmnopqrstuvwxyz'-.")), Vocab(["AH0", "B"])
    model = gru_seq2seq(len(src), len(tgt), **model_args)
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"model": {"name": "gru", "args": config_args or model_args}}))
    (run / "artifacts.json").write_text(json.dumps({"src": src.to_dict(), "tgt": tgt.to_dict()}))
    save_checkpoint(run / "checkpoints", "step-00000001", model, Parts(model), {}, {"step": 1})
    return model


def test_run_encoder_loads_when_it_fits_and_errors_when_not(tmp_path):
    g2p = fake_g2p_run(tmp_path / "fits", emb=256, hidden=256, bidirectional=False, attention=None)
    model = StressKind().model_for_check(recipe(encoder=f"run:{tmp_path / 'fits'}"))
    assert model.encoder.embed.weight.shape[0] == 33  # the run's own grapheme vocabulary
    assert all(torch.equal(a, b) for a, b in zip(model.encoder.parameters(), g2p.encoder.parameters(), strict=True))
    # any GRU G2P run: the stress model's encoder takes the shape the run's config.yaml gives
    deep = fake_g2p_run(tmp_path / "deep", emb=16, hidden=32, layers=1, enc_layers=2, bidirectional=True)
    model = StressKind().model_for_check(recipe(encoder=f"run:{tmp_path / 'deep'}"))
    assert model.encoder.rnn.num_layers == 2 and model.encoder.rnn.bidirectional
    assert all(torch.equal(a, b) for a, b in zip(model.encoder.parameters(), deep.encoder.parameters(), strict=True))
    fake_g2p_run(tmp_path / "small", config_args={"emb": 16, "hidden": 64}, emb=16, hidden=32)
    with pytest.raises(ConfigError, match=r"encoder of run .*small' does not fit .*rnn\.weight_hh_l0"):
        StressKind().model_for_check(recipe(encoder=f"run:{tmp_path / 'small'}"))
    with pytest.raises(ConfigError, match=r"is not a partwise run directory"):
        StressKind().check(recipe(encoder=f"run:{tmp_path / 'missing'}"))


@pytest.mark.slow
@needs_g2p_en
def test_recipe_trains_end_to_end(tmp_path, capsys):
    run = tmp_path / "run"
    code = main(["train", str(RECIPE), f"run_dir={run}", "data.limit=60", "training.batch_size=32",
                 "plan.0.epochs=2", "plan.1.epochs=1", "training.max_minutes=null"])
    out = capsys.readouterr()
    assert code == 0, out.err
    rows = (run / "metrics.csv").read_text().splitlines()
    assert len(rows) == 4 and "dev_both_acc" in rows[0] and "dev_majority_stress_acc" in rows[0]
    assert yaml.safe_load((run / "config.yaml").read_text())["training"]["cache"] == "on"
    assert main(["eval", str(run), "--split", "test"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("test: loss") and "both_acc" in out and "majority_syllables_acc" in out
    assert main(["predict", str(run), "about"]) == 0
    assert "syllable" in capsys.readouterr().out
