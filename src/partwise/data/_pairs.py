"""Source/target pairs from a text file: TSV, CSV or JSON lines (the pair-file data contract).

One pair per line; blank lines are skipped; a byte-order mark at the start is ignored; CRLF is fine.

* ``tsv``: ``source<TAB>target`` — exactly one tab per line.
* ``csv``: two comma-separated columns, quoted as in RFC 4180 when a field holds a comma or a quote
  (one pair per line: no line breaks inside fields). A first row equal to the two field names
  (``source,target``) is a header and skipped.
* ``jsonl``: one JSON object per line with a string for each of the two fields (default
  ``{"source": ..., "target": ...}``; other keys are ignored).

``format="auto"`` picks by extension: ``.tsv``/``.txt`` → tsv, ``.csv`` → csv, ``.jsonl``/``.json`` →
jsonl. Each side is stripped of surrounding whitespace, must be non-empty, and is split by its
:class:`~partwise.data.Tokenization`. The file is decoded with ``encoding`` (default UTF-8); every
line that cannot be decoded or parsed is reported at once, with its number and the reason.
"""

from __future__ import annotations

import codecs
import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from partwise.data._errors import DataFormatError
from partwise.data._tokenize import Tokenization

__all__ = ["read_pairs", "read_pair_texts", "pair_format", "Tokenize", "FORMATS"]

Tokenize = Literal["char", "space", "regex", "hf"]
FORMATS = ("tsv", "csv", "jsonl")
_EXTENSIONS = {".tsv": "tsv", ".txt": "tsv", ".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl"}
_SHOWN = 5
DOCS = "see docs/guides/own-data.md, 'Pair files'"


def pair_format(path: str | Path, format: str = "auto") -> str:
    """The format of ``path``: ``format`` itself, or (``"auto"``) the one its extension names.

    Examples:
        >>> pair_format("data/train.jsonl"), pair_format("x.dat", "csv")
        ('jsonl', 'csv')
    """
    if format != "auto":
        if format not in FORMATS:
            raise ValueError(f"format={format!r} is not a pair-file format; choose auto or one of {list(FORMATS)}")
        return format
    suffix = Path(path).suffix.lower()
    if suffix not in _EXTENSIONS:
        raise ValueError(f"{str(path)!r}: cannot tell the format from the extension {suffix or '(none)'!r}; name "
                         f"the file .tsv, .csv or .jsonl, or set the format ({DOCS})")
    return _EXTENSIONS[suffix]


def _expected(fmt: str, fields: Sequence[str]) -> str:
    return {
        "tsv": "one pair per line: 'source<TAB>target', both sides non-empty, blank lines ignored",
        "csv": "one pair per line: two comma-separated columns (quote a field holding a comma), both non-empty",
        "jsonl": f"one JSON object per line with string fields {fields[0]!r} and {fields[1]!r}, both non-empty",
    }[fmt]


def _fields(line: str, fmt: str, fields: Sequence[str]) -> tuple[str, str] | str:
    """The two sides of one line, or why the line is bad."""
    if fmt == "tsv":
        cells = line.split("\t")
        return (cells[0], cells[1]) if len(cells) == 2 else f"{len(cells) - 1} tabs, expected 1"
    if fmt == "csv":
        try:
            cells = next(csv.reader([line], strict=True))
        except csv.Error as e:
            return f"not CSV ({e})"
        return (cells[0], cells[1]) if len(cells) == 2 else f"{len(cells)} columns, expected 2"
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        return f"not JSON ({e.msg} at column {e.colno})"
    if not isinstance(obj, dict):
        return f"a JSON {type(obj).__name__}, expected an object"
    missing = [f for f in fields if not isinstance(obj.get(f), str)]
    if missing:
        return f"no string field {missing[0]!r}"
    return obj[fields[0]], obj[fields[1]]


def read_pair_texts(path: str | Path, format: str = "auto", encoding: str = "utf-8",
                    fields: Sequence[str] = ("source", "target")) -> list[tuple[str, str]]:
    """The ``(source, target)`` texts of a pair file, untokenised (see the module docs).

    Raises:
        FileNotFoundError: ``path`` is not a file.
        DataFormatError: lines that cannot be decoded or parsed, or with an empty side; every bad
            line number is listed, the first few shown with the reason.

    Examples:
        >>> import tempfile, pathlib
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "p.jsonl"
        >>> _ = f.write_text('{"source": "walk <VBD>", "target": "walked"}\\n', encoding="utf-8")
        >>> read_pair_texts(f)
        [('walk <VBD>', 'walked')]
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"pairs file {str(file)!r} does not exist or is not a file")
    fmt = pair_format(file, format)
    if len(fields) != 2 or not all(isinstance(f, str) and f for f in fields):
        raise ValueError(f"fields={list(fields)!r} must name two JSON keys, e.g. ['source', 'target']")
    try:
        shown_encoding = "UTF-8" if codecs.lookup(encoding).name == "utf-8" else encoding
    except LookupError:
        raise ValueError(f"encoding={encoding!r} is not a text encoding Python knows; e.g. utf-8 or latin-1") from None
    pairs: list[tuple[str, str]] = []
    bad: list[tuple[int, str, str]] = []  # (line number, reason, text)
    for number, line, undecodable in _lines(file.read_bytes(), encoding, shown_encoding):
        if undecodable:
            bad.append((number, undecodable, line))
            continue
        if number == 1:
            line = line.removeprefix("\ufeff")  # byte-order mark written by some editors
        if not line.strip():
            continue
        got = _fields(line, fmt, fields)
        if isinstance(got, str):
            bad.append((number, got, line))
            continue
        src, tgt = got[0].strip(), got[1].strip()
        if fmt == "csv" and not pairs and not bad and [src, tgt] == list(fields):
            continue  # a header row
        if not src or not tgt:
            bad.append((number, f"empty {'source' if not src else 'target'}", line))
            continue
        pairs.append((src, tgt))
    if bad:
        numbers = ", ".join(str(n) for n, _, _ in bad)
        shown = "; ".join(f"line {n} ({why}): {text[:60]!r}" for n, why, text in bad[:_SHOWN])
        raise DataFormatError(f"{file}: {len(bad)} malformed line(s): {numbers}. First: {shown}. Expected "
                              f"{_expected(fmt, fields)} ({fmt}; {DOCS})")
    if not pairs:
        raise DataFormatError(f"{file}: no pairs found; expected {_expected(fmt, fields)} ({fmt}; {DOCS})")
    return pairs


def _lines(data: bytes, encoding: str, shown: str) -> list[tuple[int, str, str | None]]:
    """``(number, text, why not decodable or None)`` per line of ``data``. A codec that writes a line
    break as the byte ``\\n`` (UTF-8, Latin-1, cp1252 ...) is split into lines first, so each line
    that cannot be decoded is reported; any other (UTF-16, UTF-32) is decoded whole first, since its
    line breaks are not single bytes, and a decoding error is reported at its line."""
    if "\n".encode(encoding) == b"\n":
        out: list[tuple[int, str, str | None]] = []
        for number, raw in enumerate(data.splitlines(), start=1):
            try:
                out.append((number, raw.decode(encoding), None))
            except UnicodeDecodeError as err:
                out.append((number, raw.decode(encoding, "replace"), f"not {shown} at byte {err.start}"))
        return out
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as err:
        before = data[: err.start].decode(encoding, "replace")
        number = before.count("\n") + 1
        return [(number, before.rsplit("\n", 1)[-1], f"not {shown} at byte {err.start} of the file")]
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [(number, line, None) for number, line in enumerate(lines, start=1)]


def read_pairs(
    path: str | Path, tokenize: Tokenize | Tokenization | dict[str, Any] = "char",
    tgt_tokenize: Tokenize | Tokenization | dict[str, Any] | None = None, *, format: str = "auto",
    encoding: str = "utf-8", fields: Sequence[str] = ("source", "target"),
) -> list[tuple[list[str], list[str]]]:
    """Read a pair file into token lists (see the module docs for the formats).

    Args:
        path: the file (TSV, CSV or JSON lines).
        tokenize: how to split the source (and the target, unless ``tgt_tokenize`` is given): a
            :class:`~partwise.data.Tokenization`, its name, or a mapping such as
            ``{"tokenize": "regex", "pattern": "<[A-Z]+>|\\\\S"}``.
        tgt_tokenize: how to split the target, e.g. ``"space"`` for ``word<TAB>HH AH L OW``.
        format: ``"auto"`` (by extension), ``"tsv"``, ``"csv"`` or ``"jsonl"``.
        encoding: the file's text encoding.
        fields: the JSON keys of the source and the target (``jsonl``; also a CSV header).

    Raises:
        DataFormatError: every malformed line listed (see :func:`read_pair_texts`).

    Examples:
        >>> import tempfile, pathlib
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "p.tsv"
        >>> _ = f.write_text("hi\\tHH AY1\\n\\nok\\tOW K EY\\n", encoding="utf-8")
        >>> read_pairs(f, tgt_tokenize="space")
        [(['h', 'i'], ['HH', 'AY1']), (['o', 'k'], ['OW', 'K', 'EY'])]
    """
    src_tok = _tokenization(tokenize, "tokenize")
    tgt_tok = src_tok if tgt_tokenize is None else _tokenization(tgt_tokenize, "tgt_tokenize")
    texts = read_pair_texts(path, format=format, encoding=encoding, fields=fields)
    src_tok.load(), tgt_tok.load()
    out, empty = [], []
    for number, (src, tgt) in enumerate(texts, start=1):
        pair = (src_tok.split(src), tgt_tok.split(tgt))
        if not pair[0] or not pair[1]:
            empty.append(f"pair {number} ({src[:30]!r} -> {tgt[:30]!r}): "
                         f"no {'source' if not pair[0] else 'target'} tokens")
            continue
        out.append(pair)
    if empty:
        raise DataFormatError(f"{path}: {len(empty)} pair(s) have no tokens after tokenisation: "
                              f"{'; '.join(empty[:_SHOWN])}; check the tokenize pattern ({DOCS})")
    return out


def _tokenization(spec: Any, argument: str) -> Tokenization:
    try:
        return Tokenization.of(spec)
    except ValueError as e:
        raise ValueError(f"{argument}: {e}" if not str(e).startswith("tokenize=") else
                         str(e).replace("tokenize=", f"{argument}=", 1)) from None
