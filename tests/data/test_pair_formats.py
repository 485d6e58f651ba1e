"""The pair-file contract: TSV, CSV, JSON lines; per-side tokenisation; encodings; all bad lines at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from partwise.data import DataFormatError, Tokenization, pair_format, read_pair_texts, read_pairs


def test_formats_by_extension_give_the_same_pairs(tmp_path: Path) -> None:
    (tmp_path / "p.tsv").write_text("walk <VBD>\twalked\n", encoding="utf-8")
    (tmp_path / "p.csv").write_text('source,target\n"walk <VBD>",walked\n', encoding="utf-8")
    (tmp_path / "p.jsonl").write_text('{"source": "walk <VBD>", "target": "walked", "id": 7}\n', encoding="utf-8")
    regex = {"tokenize": "regex", "pattern": r"<[A-Z]+>|\S"}
    expected = [(["w", "a", "l", "k", "<VBD>"], list("walked"))]
    for name in ("p.tsv", "p.csv", "p.jsonl"):
        assert read_pairs(tmp_path / name, regex, "char") == expected, name


def test_csv_quotes_and_jsonl_custom_fields(tmp_path: Path) -> None:
    (tmp_path / "q.csv").write_text('"a, b","say ""hi"""\n', encoding="utf-8")
    assert read_pair_texts(tmp_path / "q.csv") == [("a, b", 'say "hi"')]
    (tmp_path / "q.jsonl").write_text('{"lemma": "go", "form": "went"}\n', encoding="utf-8")
    assert read_pair_texts(tmp_path / "q.jsonl", fields=("lemma", "form")) == [("go", "went")]


def test_every_bad_line_is_reported_at_once_in_each_format(tmp_path: Path) -> None:
    (tmp_path / "b.csv").write_text("a,b\nonly one\na,b,c\n,x\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"3 malformed line\(s\): 2, 3, 4.*own-data.md"):
        read_pair_texts(tmp_path / "b.csv")
    (tmp_path / "b.jsonl").write_text('{"source": "a", "target": "b"}\n[1]\n{"source": "a"}\nnot json\n',
                                      encoding="utf-8")
    with pytest.raises(DataFormatError) as info:
        read_pair_texts(tmp_path / "b.jsonl")
    message = str(info.value)
    assert "3 malformed line(s): 2, 3, 4" in message
    assert "expected an object" in message and "no string field 'target'" in message and "not JSON" in message


def test_encoding_is_checked_and_configurable(tmp_path: Path) -> None:
    path = tmp_path / "latin.tsv"
    path.write_bytes("caf\xe9\tK\nna\xefve\tN\n".encode("latin-1"))
    with pytest.raises(DataFormatError, match=r"2 malformed line\(s\): 1, 2.*not UTF-8"):
        read_pair_texts(path)
    assert read_pair_texts(path, encoding="latin-1") == [("café", "K"), ("naïve", "N")]
    with pytest.raises(ValueError, match="encoding='klingon'"):
        read_pair_texts(path, encoding="klingon")


def test_format_errors_name_the_fix(tmp_path: Path) -> None:
    assert pair_format("a.TSV") == "tsv"
    with pytest.raises(ValueError, match=r"'\.dat'.*\.tsv, \.csv or \.jsonl"):
        pair_format("a.dat")
    with pytest.raises(ValueError, match="format='xml'"):
        pair_format("a.tsv", "xml")


def test_tokenizations_and_their_joins() -> None:
    assert Tokenization("char", lowercase=True).split("Ab") == ["a", "b"]
    assert Tokenization("space").split(" a  b ") == ["a", "b"]
    with pytest.raises(ValueError, match="needs a pattern"):
        Tokenization("regex")
    with pytest.raises(ValueError, match="capturing groups"):
        Tokenization("regex", pattern="(a)|b")
    with pytest.raises(ValueError, match="not a regular expression"):
        Tokenization("regex", pattern="[")
    with pytest.raises(ValueError, match="needs a path"):
        Tokenization("hf")


def test_a_pattern_that_matches_nothing_is_reported(tmp_path: Path) -> None:
    (tmp_path / "p.tsv").write_text("abc\txyz\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match="no source tokens"):
        read_pairs(tmp_path / "p.tsv", {"tokenize": "regex", "pattern": "[0-9]"}, "char")


def test_hf_tokenizer_from_a_local_folder(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "walk": 1, "ed": 2, "##ed": 3, "talk": 4}
    core = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.decoder = decoders.WordPiece()
    PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]").save_pretrained(tmp_path / "tok")
    (tmp_path / "p.tsv").write_text("walk\twalked\n", encoding="utf-8")
    hf = {"tokenize": "hf", "path": str(tmp_path / "tok")}
    assert read_pairs(tmp_path / "p.tsv", "char", hf) == [(list("walk"), ["walk", "##ed"])]
    assert Tokenization.of(hf).join(["walk", "##ed"]) == "walked"
    with pytest.raises(ValueError, match="not a folder"):
        Tokenization("hf", path=str(tmp_path / "missing")).load()
