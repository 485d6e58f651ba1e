"""WER/PER on hand-computed cases."""

from __future__ import annotations

import pytest

from partwise.metrics import edit_distance, per, score_g2p, wer

CAT = ["K", "AE", "T", "S"]


def test_edit_distance_counts_token_edits() -> None:
    assert edit_distance(CAT, CAT) == 0
    assert edit_distance(CAT, ["K", "AA", "T", "S"]) == 1  # substitution
    assert edit_distance(CAT, ["K", "AE", "T"]) == 1  # deletion
    assert edit_distance(CAT, ["K", "AE", "AE", "T", "S"]) == 1  # insertion
    assert edit_distance([], CAT) == 4
    # multi-character tokens are compared whole, not letter by letter
    assert edit_distance(["AH0"], ["AH1"]) == 1


def test_one_substitution_in_four_phonemes() -> None:
    predictions = [["K", "AA", "T", "S"]]
    references = [[CAT]]
    assert wer(predictions, references) == 1.0
    assert per(predictions, references) == 0.25


def test_any_reference_counts_as_correct() -> None:
    references = [[["R", "IY", "D"], ["R", "EH", "D"]]]
    assert wer([["R", "EH", "D"]], references) == 0.0
    assert per([["R", "EH", "D"]], references) == 0.0


def test_per_uses_the_closest_reference() -> None:
    # distance 2 to the 4-phoneme reference, 1 to the 3-phoneme one -> 1 / 3
    assert per([["K", "AA", "T"]], [[CAT, ["K", "AE", "T"]]]) == pytest.approx(1 / 3)


def test_per_ties_go_to_the_shortest_reference() -> None:
    # distance 1 to both "A B C" and "A": the shorter reference gives 1 / 1, not 1 / 3
    assert per([["A", "B"]], [[["A", "B", "C"], ["A"]]]) == 1.0
    assert per([["A", "B"]], [[["A"], ["A", "B", "C"]]]) == 1.0


def test_rates_are_summed_over_words() -> None:
    predictions = [["K", "AA", "T", "S"], ["HH", "AY"], []]
    references = [[CAT], [["HH", "AY"]], [["OW"]]]
    assert wer(predictions, references) == pytest.approx(2 / 3)
    assert per(predictions, references) == pytest.approx((1 + 0 + 1) / (4 + 2 + 1))
    assert score_g2p(predictions, references) == {
        "wer": pytest.approx(2 / 3),
        "per": pytest.approx(2 / 7),
        "words": 3,
    }


def test_bad_input_is_reported() -> None:
    with pytest.raises(ValueError, match="2 predictions but 1 reference"):
        wer([["A"], ["B"]], [[["A"]]])
    with pytest.raises(ValueError, match="no predictions"):
        per([], [])
    with pytest.raises(TypeError, match="wrap it"):
        wer([["A"]], [["A"]])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="the string 'K AE T'"):
        per(["K AE T"], [[CAT]])  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"references\[0\]"):
        score_g2p([["A"]], [[]])
    with pytest.raises(TypeError, match="string"):
        edit_distance("abc", ["a"])  # type: ignore[arg-type]
