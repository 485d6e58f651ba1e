from __future__ import annotations

import json

import pytest
import torch

from partwise.data import SPECIAL_TOKENS, Vocab
from partwise.seq2seq._protocol import BOS, EOS, PAD, UNK


def test_specials_sit_at_the_protocol_ids() -> None:
    vocab = Vocab.build([["x"]])
    assert vocab.tokens[PAD] == "<pad>"
    assert vocab.tokens[UNK] == "<unk>"
    assert vocab.tokens[BOS] == "<s>"
    assert vocab.tokens[EOS] == "</s>"
    assert vocab.tokens[:4] == list(SPECIAL_TOKENS)


def test_build_is_independent_of_data_order() -> None:
    a = Vocab.build([["b", "a"], ["c"]])
    b = Vocab.build([["c", "c"], ["a", "b"]])
    assert a == b
    assert a.tokens[4:] == ["a", "b", "c"]
    assert len(a) == 7


def test_min_count_drops_rare_tokens() -> None:
    vocab = Vocab.build([["a", "b", "a"], ["c", "a", "b"]], min_count=2)
    assert vocab.tokens[4:] == ["a", "b"]
    assert "c" not in vocab


def test_specials_in_the_data_are_not_added_twice() -> None:
    vocab = Vocab.build([["<unk>", "a", "</s>"]])
    assert vocab.tokens == [*SPECIAL_TOKENS, "a"]


def test_encode_maps_unknown_tokens_to_unk_and_adds_frame() -> None:
    vocab = Vocab(["a", "b"])
    assert vocab.encode(["b", "a", "zz"]) == [5, 4, UNK]
    assert vocab.encode(["a"], add_bos=True, add_eos=True) == [BOS, 4, EOS]


def test_decode_stops_at_eos_and_drops_pad_and_bos() -> None:
    vocab = Vocab(["a", "b"])
    assert vocab.decode([BOS, 4, UNK, 5, EOS, 4, PAD]) == ["a", "<unk>", "b"]
    assert vocab.decode(torch.tensor([4, 5, PAD, PAD])) == ["a", "b"]
    assert vocab.decode([BOS, 4, EOS, PAD], strip_special=False) == ["<s>", "a", "</s>", "<pad>"]


def test_encode_decode_round_trip() -> None:
    vocab = Vocab.build([list("hello"), list("world")])
    word = list("lower")
    assert vocab.decode(vocab.encode(word, add_bos=True, add_eos=True)) == word


def test_dict_round_trip_through_json() -> None:
    vocab = Vocab.build([["HH", "AH0"], ["L", "OW1"]])
    restored = Vocab.from_dict(json.loads(json.dumps(vocab.to_dict())))
    assert restored == vocab
    assert restored.encode(["L", "HH"]) == vocab.encode(["L", "HH"])


def test_equality_compares_tokens() -> None:
    assert Vocab(["a"]) != Vocab(["b"])
    assert Vocab(["a"]) != ["<pad>", "<unk>", "<s>", "</s>", "a"]
    assert hash(Vocab(["a"])) == hash(Vocab(["a"]))


@pytest.mark.parametrize(
    "data",
    [{"tokens": ["a", "b"]}, {"words": []}, ["<pad>", "<unk>", "<s>", "</s>"]],
)
def test_from_dict_rejects_foreign_data(data: object) -> None:
    with pytest.raises(ValueError, match="Vocab.from_dict"):
        Vocab.from_dict(data)  # type: ignore[arg-type]


def test_bad_input_is_reported() -> None:
    with pytest.raises(TypeError, match="list\\(word\\)"):
        Vocab(["a"]).encode("ab")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="token sequence"):
        Vocab.build(["abc"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="appears twice"):
        Vocab(["a", "a"])
    with pytest.raises(ValueError, match="special token"):
        Vocab(["<s>"])
    with pytest.raises(ValueError, match="min_count=0"):
        Vocab.build([["a"]], min_count=0)
    with pytest.raises(ValueError, match="id 9"):
        Vocab(["a"]).decode([4, 9])
