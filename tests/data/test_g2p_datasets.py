from __future__ import annotations

from pathlib import Path

import pytest

from partwise.data import G2PData, load_cmudict, make_g2p_datasets
from partwise.seq2seq._protocol import UNK


def test_sizes_and_references(g2p_data: G2PData) -> None:
    train = load_cmudict("train")
    assert len(g2p_data.train) == train.num_pronunciations
    assert len(g2p_data.dev) == 6_302 and len(g2p_data.test) == 12_604
    assert g2p_data.test.references == load_cmudict("test").references
    assert g2p_data.dev.sources[0] == list(load_cmudict("dev").words[0])


def test_vocabularies_come_from_training_words(g2p_data: G2PData) -> None:
    train = load_cmudict("train")
    chars = sorted({c for w in train.words for c in w})
    phonemes = sorted({p for refs in train.references for pron in refs for p in pron})
    assert g2p_data.src_vocab.tokens[4:] == chars
    assert g2p_data.tgt_vocab.tokens[4:] == phonemes
    assert g2p_data.train.src_vocab is g2p_data.src_vocab
    assert g2p_data.test.tgt_vocab is g2p_data.tgt_vocab


def _write_dict(path: Path, words: list[str]) -> Path:
    path.write_text(
        "".join(f"{w} {' '.join(c.upper() + '1' for c in w)}\n" for w in words), "utf-8"
    )
    return path


def test_unseen_graphemes_map_to_unk(tmp_path: Path) -> None:
    words = ["a" * (i + 1) + "b" for i in range(17)] + ["qq", "ab-c", "zz"]
    data = make_g2p_datasets(path=_write_dict(tmp_path / "d.dict", words))
    assert len(data.train) == 17 and len(data.test) == 2 and len(data.dev) == 1
    assert data.test[0].src.tolist()[:2] == [UNK, UNK]  # "q" never occurs in training
    assert data.test.references[0] == [["Q", "Q"]]
    assert data.test[1].src.tolist()[2] == UNK  # nor does "-"


def test_limit_and_stress() -> None:
    data = make_g2p_datasets(stress=True, limit=200)
    assert len(data.dev) == len(data.test) == 200
    assert "AH0" in data.tgt_vocab and "AH" not in data.tgt_vocab
    with pytest.raises(ValueError, match="limit=0"):
        make_g2p_datasets(limit=0)


def test_training_on_first_pronunciations_only_keeps_every_reference_for_scoring():
    from partwise.data import load_cmudict_splits

    train = load_cmudict_splits()["train"]
    first = make_g2p_datasets(pronunciations="first")
    assert len(first.train) == len(train.words) < train.num_pronunciations
    everything = make_g2p_datasets()
    assert len(everything.train) == train.num_pronunciations
    assert first.dev.references == everything.dev.references  # scored against all pronunciations
    with pytest.raises(ValueError, match="pronunciations='some' must be 'all' or 'first'"):
        make_g2p_datasets(pronunciations="some")
