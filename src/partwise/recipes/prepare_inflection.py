"""Pair files for English morphological inflection from the lexicon inside the ``lemminflect`` package.

    python recipes/prepare_inflection.py data/inflection      # then: partwise train recipes/inflection.yaml

Reads ``lemminflect/resources/infl_lu.csv.gz`` (lemma, category, inflected forms; MIT licence) from
the installed package (``pip install 'partwise[data]'``) without importing it, and writes
``train.tsv``, ``dev.tsv`` and ``test.tsv`` in partwise's pair-file format: ``lemma <TAG><TAB>form``
with Penn Treebank tags (NNS; VBD, VBN, VBG, VBZ; JJR, JJS; RBR, RBS), e.g. ``swim <VBD>\tswam``.
Only lowercase alphabetic lemmas and forms are kept, with the lexicon's first spelling of each form.

The split is by lemma (a SIGMORPHON-style held-out-lemma split): lemmas in sorted order, the i-th goes
to dev when i % 10 == 8, to test when i % 10 == 9, else to train, so no test lemma is seen in any
form during training. It also prints two baselines on dev and test: *copy* (the output is the lemma)
and *majority rule* (per tag, the most frequent "drop k letters, add suffix" rule of the training
pairs, e.g. VBD: +ed).
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

TAGS = {"noun": ["NNS"], "adj": ["JJR", "JJS"], "adv": ["RBR", "RBS"], "verb": ["VBD", "VBN", "VBG", "VBZ"]}
WORD = re.compile(r"[a-z]+")


def lexicon_path() -> Path:
    """The lexicon file inside the installed lemminflect package (located, not imported)."""
    spec = importlib.util.find_spec("lemminflect")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("prepare_inflection: the lemminflect package is not installed: pip install 'partwise[data]'")
    path = Path(next(iter(spec.submodule_search_locations))) / "resources" / "infl_lu.csv.gz"
    if not path.is_file():
        sys.exit(f"prepare_inflection: {path} is missing; reinstall lemminflect")
    return path


def read_pairs(path: Path) -> list[tuple[str, str, str]]:
    """``(lemma, tag, form)`` for every lowercase alphabetic entry, first spelling, in file order."""
    seen, out = set(), []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            lemma, category, *forms = line.rstrip("\n").split(",")
            if category not in TAGS or not WORD.fullmatch(lemma):
                continue
            for tag, spellings in zip(TAGS[category], forms, strict=False):
                form = spellings.split("/")[0]
                if WORD.fullmatch(form) and (lemma, tag) not in seen:
                    seen.add((lemma, tag))
                    out.append((lemma, tag, form))
    return out


def split_by_lemma(pairs: list[tuple[str, str, str]]) -> dict[str, list[tuple[str, str, str]]]:
    lemmas = sorted({lemma for lemma, _, _ in pairs})
    split_of = {lemma: ("dev" if i % 10 == 8 else "test" if i % 10 == 9 else "train") for i, lemma in enumerate(lemmas)}
    out: dict[str, list[tuple[str, str, str]]] = {"train": [], "dev": [], "test": []}
    for pair in pairs:
        out[split_of[pair[0]]].append(pair)
    return out


def rule(lemma: str, form: str) -> tuple[int, str]:
    """``(letters dropped from the end of the lemma, suffix added)``: walk -> walked is (0, 'ed')."""
    common = 0
    while common < min(len(lemma), len(form)) and lemma[common] == form[common]:
        common += 1
    return len(lemma) - common, form[common:]


def apply(lemma: str, r: tuple[int, str]) -> str:
    return (lemma[: len(lemma) - r[0]] if r[0] else lemma) + r[1]


def baselines(splits: dict[str, list[tuple[str, str, str]]]) -> dict[str, dict[str, float]]:
    """Sequence error rates of the copy and majority-rule baselines on dev and test."""
    counts: dict[str, Counter[tuple[int, str]]] = defaultdict(Counter)
    for lemma, tag, form in splits["train"]:
        counts[tag][rule(lemma, form)] += 1
    majority = {tag: c.most_common(1)[0][0] for tag, c in counts.items()}
    out = {}
    for split in ("dev", "test"):
        rows = splits[split]
        out[split] = {"copy": sum(lemma != form for lemma, _, form in rows) / len(rows),
                      "majority rule": sum(apply(lemma, majority[tag]) != form
                                           for lemma, tag, form in rows) / len(rows)}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", help="where train.tsv, dev.tsv and test.tsv go, e.g. data/inflection")
    args = parser.parse_args(argv)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    splits = split_by_lemma(read_pairs(lexicon_path()))
    for split, rows in splits.items():
        (out / f"{split}.tsv").write_text("".join(f"{lemma} <{tag}>\t{form}\n" for lemma, tag, form in rows),
                                          encoding="utf-8")
        print(f"{out / f'{split}.tsv'}: {len(rows):,} pairs, {len({r[0] for r in rows}):,} lemmas")
    for split, scores in baselines(splits).items():
        print(f"{split} baselines (sequence error rate): " + ", ".join(f"{k} {v:.1%}" for k, v in scores.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
