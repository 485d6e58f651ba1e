"""Sequence metrics for grapheme-to-phoneme and other seq2seq tasks: WER and PER.

Conventions follow the CMUdict G2P literature (e.g. Sequitur, g2p-seq2seq): a word counts as
correct if its prediction equals any of its reference pronunciations (WER), and phoneme errors
are counted against the closest reference (PER).
"""

from __future__ import annotations

from collections.abc import Sequence

from rapidfuzz.distance import Levenshtein

__all__ = ["edit_distance", "per", "score_g2p", "wer"]

Tokens = Sequence[str]


def edit_distance(a: Tokens, b: Tokens) -> int:
    """Levenshtein distance between two token sequences (insert, delete, substitute: cost 1).

    >>> edit_distance(["K", "AE", "T"], ["K", "AA", "T", "S"])
    2
    """
    for name, seq in (("a", a), ("b", b)):
        if isinstance(seq, str):
            raise TypeError(
                f"edit_distance got the string {seq!r} as {name}; pass a list of tokens, "
                "e.g. 'K AE T'.split()"
            )
    return Levenshtein.distance(list(a), list(b))


def _check(predictions: Sequence[Tokens], references: Sequence[Sequence[Tokens]]) -> None:
    if len(predictions) != len(references):
        raise ValueError(
            f"got {len(predictions)} predictions but {len(references)} reference lists; "
            "pass one prediction and one list of references per word"
        )
    if not predictions:
        raise ValueError("got no predictions; scoring needs at least one word")
    for i, (pred, refs) in enumerate(zip(predictions, references, strict=True)):
        if isinstance(pred, str):
            raise TypeError(
                f"prediction {i} is the string {pred!r}; pass token lists, e.g. 'K AE T'.split()"
            )
        if isinstance(refs, str) or not refs:
            raise ValueError(
                f"references[{i}] is {refs!r}; each word needs a non-empty list of reference "
                "token lists, e.g. [['K', 'AE', 'T']]"
            )
        if isinstance(refs[0], str):
            raise TypeError(
                f"references[{i}] is {refs!r}, a single token list; wrap it as [[...]] "
                "(references are lists of acceptable token lists per word)"
            )


def _closest(pred: Tokens, refs: Sequence[Tokens]) -> tuple[int, int]:
    """(distance, reference length) of the closest reference; ties go to the shortest."""
    return min((edit_distance(pred, ref), len(ref)) for ref in refs)


def wer(predictions: Sequence[Tokens], references: Sequence[Sequence[Tokens]]) -> float:
    """Word error rate: share of words whose prediction equals none of its references.

    >>> wer([["K", "AE", "T"], ["D", "AO", "G"]], [[["K", "AE", "T"]], [["D", "AA", "G"]]])
    0.5
    """
    _check(predictions, references)
    wrong = sum(
        all(list(pred) != list(ref) for ref in refs)
        for pred, refs in zip(predictions, references, strict=True)
    )
    return wrong / len(predictions)


def per(predictions: Sequence[Tokens], references: Sequence[Sequence[Tokens]]) -> float:
    """Phoneme error rate: edit distances to each word's closest reference, summed, over the
    summed lengths of those references.

    >>> per([["K", "AA", "T"]], [[["K", "AE", "T", "S"], ["K", "AE", "T"]]])
    0.3333333333333333
    """
    _check(predictions, references)
    errors = length = 0
    for pred, refs in zip(predictions, references, strict=True):
        distance, ref_len = _closest(pred, refs)
        errors += distance
        length += ref_len
    if length == 0:
        raise ValueError("all closest references are empty; PER is undefined for empty references")
    return errors / length


def score_g2p(
    predictions: Sequence[Tokens], references: Sequence[Sequence[Tokens]]
) -> dict[str, float | int]:
    """WER and PER together: ``{"wer": ..., "per": ..., "words": n}``.

    >>> score_g2p([["HH", "AY"]], [[["HH", "AY"]]])
    {'wer': 0.0, 'per': 0.0, 'words': 1}
    """
    return {
        "wer": wer(predictions, references),
        "per": per(predictions, references),
        "words": len(predictions),
    }
