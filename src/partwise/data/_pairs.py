"""Source/target pairs from a tab-separated text file."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from partwise.data._errors import DataFormatError

__all__ = ["read_pairs", "Tokenize"]

Tokenize = Literal["char", "space"]
_TOKENIZERS = ("char", "space")
_EXPECTED = "one pair per line: 'source<TAB>target', both sides non-empty, blank lines ignored"
_SHOWN = 5


def _tokenizer(name: str, argument: str) -> Tokenize:
    if name not in _TOKENIZERS:
        raise ValueError(
            f"{argument}={name!r} is not a tokenizer; choose one of {list(_TOKENIZERS)}"
        )
    return name  # type: ignore[return-value]


def _split(text: str, mode: Tokenize) -> list[str]:
    return list(text) if mode == "char" else text.split()


def read_pairs(
    path: str | Path, tokenize: Tokenize = "char", tgt_tokenize: Tokenize | None = None
) -> list[tuple[list[str], list[str]]]:
    """Read ``source<TAB>target`` lines into token lists.

    Each side is stripped of surrounding whitespace, then split into characters (``"char"``)
    or on whitespace (``"space"``).

    Args:
        path: UTF-8 text file.
        tokenize: how to split the source (and the target, unless ``tgt_tokenize`` is given).
        tgt_tokenize: how to split the target, e.g. ``"space"`` for ``word<TAB>HH AH L OW``.

    Raises:
        DataFormatError: lines without exactly one tab, with an empty side or that are not
            UTF-8; all bad line numbers are listed.

    >>> import tempfile, pathlib
    >>> f = pathlib.Path(tempfile.mkdtemp()) / "p.tsv"
    >>> _ = f.write_text("hi\\tHH AY1\\n\\nok\\tOW K EY\\n", encoding="utf-8")
    >>> read_pairs(f, tgt_tokenize="space")
    [(['h', 'i'], ['HH', 'AY1']), (['o', 'k'], ['OW', 'K', 'EY'])]
    """
    src_mode = _tokenizer(tokenize, "tokenize")
    tgt_mode = src_mode if tgt_tokenize is None else _tokenizer(tgt_tokenize, "tgt_tokenize")
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"pairs file {str(file)!r} does not exist or is not a file")
    pairs: list[tuple[list[str], list[str]]] = []
    bad: list[tuple[int, str, str]] = []  # (line number, reason, text)
    for number, raw in enumerate(file.read_bytes().splitlines(), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            bad.append((number, f"not UTF-8 at byte {err.start}", raw.decode("utf-8", "replace")))
            continue
        if number == 1:
            line = line.removeprefix("\ufeff")  # byte-order mark written by some editors
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 2:
            bad.append((number, f"{len(fields) - 1} tabs, expected 1", line))
            continue
        src, tgt = fields[0].strip(), fields[1].strip()
        if not src or not tgt:
            bad.append((number, f"empty {'source' if not src else 'target'}", line))
            continue
        pairs.append((_split(src, src_mode), _split(tgt, tgt_mode)))
    if bad:
        numbers = ", ".join(str(n) for n, _, _ in bad)
        shown = "; ".join(f"line {n} ({why}): {text[:60]!r}" for n, why, text in bad[:_SHOWN])
        raise DataFormatError(
            f"{file}: {len(bad)} malformed line(s): {numbers}. First: {shown}. Expected {_EXPECTED}"
        )
    if not pairs:
        raise DataFormatError(f"{file}: no pairs found; expected {_EXPECTED}")
    return pairs
