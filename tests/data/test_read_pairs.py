from __future__ import annotations

from pathlib import Path

import pytest

from partwise.data import DataFormatError, read_pair_texts, read_pairs


def _write(tmp_path: Path, data: str | bytes) -> Path:
    path = tmp_path / "pairs.tsv"
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8", newline="")
    else:
        path.write_bytes(data)
    return path


def test_char_and_space_tokenization(tmp_path: Path) -> None:
    path = _write(tmp_path, "ab c\tx y\n")
    assert read_pairs(path) == [(["a", "b", " ", "c"], ["x", " ", "y"])]
    assert read_pairs(path, tokenize="space") == [(["ab", "c"], ["x", "y"])]
    assert read_pairs(path, tgt_tokenize="space") == [(["a", "b", " ", "c"], ["x", "y"])]


def test_blank_lines_crlf_and_bom_are_tolerated(tmp_path: Path) -> None:
    path = _write(tmp_path, "\ufeffhi\tHH AY\r\n\r\n   \nok\tOW K EY\r\n")
    assert read_pairs(path, tgt_tokenize="space") == [
        (["h", "i"], ["HH", "AY"]),
        (["o", "k"], ["OW", "K", "EY"]),
    ]


def test_all_malformed_lines_are_reported_at_once(tmp_path: Path) -> None:
    path = _write(
        tmp_path, "good\tG\nno tab here\n\nx\ty\tz\n\tonly target\nsource only\t \nok\tK\n"
    )
    with pytest.raises(DataFormatError) as info:
        read_pairs(path)
    message = str(info.value)
    assert "4 malformed line(s): 2, 4, 5, 6" in message
    assert str(path) in message
    assert "no tab here" in message and "empty source" in message and "empty target" in message
    assert "source<TAB>target" in message
    assert isinstance(info.value, ValueError)


def test_decode_errors_name_the_line(tmp_path: Path) -> None:
    path = _write(tmp_path, b"ok\tK\nbad\xff\tX\n")
    with pytest.raises(DataFormatError, match=r"1 malformed line\(s\): 2\b.*not UTF-8"):
        read_pairs(path)


def test_missing_file_empty_file_and_bad_tokenizer(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.tsv"):
        read_pairs(tmp_path / "missing.tsv")
    with pytest.raises(DataFormatError, match="no pairs"):
        read_pairs(_write(tmp_path, "\n\n"))
    with pytest.raises(ValueError, match="tokenize='word'"):
        read_pairs(_write(tmp_path, "a\tb\n"), tokenize="word")  # type: ignore[arg-type]


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-32", "utf-8-sig", "cp1252"])
def test_pair_files_in_any_text_encoding_are_decoded_before_lines_are_split(tmp_path, encoding):
    f = tmp_path / "p.tsv"
    f.write_text("héllo\tHH EH1 L OW0\r\n\nwörld\tW ER1 L D\n", encoding=encoding)
    assert read_pair_texts(f, encoding=encoding) == [("héllo", "HH EH1 L OW0"), ("wörld", "W ER1 L D")]


def test_an_undecodable_utf16_file_names_the_line(tmp_path):
    f = tmp_path / "p.tsv"
    f.write_bytes("a\tb\nc\td\n".encode("utf-16") + b"\x00\xd8")  # a lone surrogate on line 3
    with pytest.raises(DataFormatError, match=r"line 3 \(not utf-16 at byte 18 of the file\)"):
        read_pair_texts(f, encoding="utf-16")
