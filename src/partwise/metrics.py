"""Sequence metrics for any seq2seq task: the sequence error rate and the token error rate.

* **sequence error rate**: the share of inputs whose output equals none of their references;
* **token error rate**: edit distances to each input's closest reference, summed, over the summed
  lengths of those references.

G2P calls the same two figures WER (word error rate) and PER (phoneme error rate); :func:`wer`,
:func:`per` and :func:`score_g2p` are those names. Conventions follow the CMUdict G2P literature
(e.g. Sequitur, g2p-seq2seq).
"""

from __future__ import annotations

from collections.abc import Sequence

from rapidfuzz.distance import Levenshtein

__all__ = ["edit_distance", "sequence_error_rate", "token_error_rate", "score_sequences", "per", "score_g2p", "wer"]

Tokens = Sequence[str]


def edit_distance(a: Tokens, b: Tokens) -> int:
    """Levenshtein distance between two token sequences (insert, delete, substitute: cost 1).

    Examples:
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
            "pass one prediction and one list of references per input"
        )
    if not predictions:
        raise ValueError("got no predictions; scoring needs at least one input")
    for i, (pred, refs) in enumerate(zip(predictions, references, strict=True)):
        if isinstance(pred, str):
            raise TypeError(
                f"prediction {i} is the string {pred!r}; pass token lists, e.g. 'K AE T'.split()"
            )
        if isinstance(refs, str) or not refs:
            raise ValueError(
                f"references[{i}] is {refs!r}; each input needs a non-empty list of reference "
                "token lists, e.g. [['K', 'AE', 'T']]"
            )
        if isinstance(refs[0], str):
            raise TypeError(
                f"references[{i}] is {refs!r}, a single token list; wrap it as [[...]] "
                "(references are lists of acceptable token lists per input)"
            )


def _closest(pred: Tokens, refs: Sequence[Tokens]) -> tuple[int, int]:
    """(distance, reference length) of the closest reference; ties go to the shortest."""
    return min((edit_distance(pred, ref), len(ref)) for ref in refs)


def sequence_error_rate(predictions: Sequence[Tokens], references: Sequence[Sequence[Tokens]]) -> float:
    """Share of inputs whose prediction equals none of its references (G2P: WER).

    Examples:
        >>> sequence_error_rate([["K", "AE", "T"], ["D", "AO", "G"]], [[["K", "AE", "T"]], [["D", "AA", "G"]]])
        0.5
    """
    _check(predictions, references)
    wrong = sum(
        all(list(pred) != list(ref) for ref in refs)
        for pred, refs in zip(predictions, references, strict=True)
    )
    return wrong / len(predictions)


def token_error_rate(predictions: Sequence[Tokens], references: Sequence[Sequence[Tokens]]) -> float:
    """Edit distances to each input's closest reference, summed, over the summed lengths of those
    references (G2P: PER).

    Examples:
        >>> token_error_rate([["K", "AA", "T"]], [[["K", "AE", "T", "S"], ["K", "AE", "T"]]])
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


wer = sequence_error_rate  #: G2P's name: word error rate
per = token_error_rate  #: G2P's name: phoneme error rate


def score_sequences(
    predictions: Sequence[Tokens], references: Sequence[Sequence[Tokens]]
) -> dict[str, float | int]:
    """Both error rates: ``{"seq_error": ..., "token_error": ..., "inputs": n}``.

    Examples:
        >>> score_sequences([list("walked")], [[list("walked")]])
        {'seq_error': 0.0, 'token_error': 0.0, 'inputs': 1}
    """
    return {
        "seq_error": sequence_error_rate(predictions, references),
        "token_error": token_error_rate(predictions, references),
        "inputs": len(predictions),
    }


def score_g2p(
    predictions: Sequence[Tokens], references: Sequence[Sequence[Tokens]]
) -> dict[str, float | int]:
    """WER and PER (the G2P names of the two error rates): ``{"wer": ..., "per": ..., "words": n}``.

    Examples:
        >>> score_g2p([["HH", "AY"]], [[["HH", "AY"]]])
        {'wer': 0.0, 'per': 0.0, 'words': 1}
    """
    return {
        "wer": wer(predictions, references),
        "per": per(predictions, references),
        "words": len(predictions),
    }
