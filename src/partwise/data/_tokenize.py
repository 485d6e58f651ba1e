"""How one side of a pair file is split into tokens, and joined back for display.

=========  ===========================================  =====================================
kind       tokens                                       joined back with (``predict``)
=========  ===========================================  =====================================
``char``   every character (spaces included)            ``""``
``space``  runs of non-whitespace                       ``" "``
``regex``  every match of ``pattern`` (``re.findall``)  ``" "``
``hf``     a Hugging Face tokenizer's ``tokenize``      its ``convert_tokens_to_string``
=========  ===========================================  =====================================

``hf`` loads ``AutoTokenizer.from_pretrained(path, local_files_only=True)`` from a local folder
(needs ``partwise[hf]``; never a download). ``lowercase=True`` lowercases the text first.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Tokenization", "TOKENIZERS"]

TOKENIZERS = ("char", "space", "regex", "hf")


@functools.lru_cache(maxsize=8)
def _hf_tokenizer(path: str) -> Any:
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise ValueError("tokenize 'hf' needs the transformers package: pip install 'partwise[hf]'") from None
    folder = Path(path)
    if not folder.is_dir():
        raise ValueError(f"tokenizer path {path!r} is not a folder; give a local folder written by "
                         "tokenizer.save_pretrained(DIR) (partwise never downloads)")
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as e:
        why = " ".join(str(e).split())[:160]
        raise ValueError(f"tokenizer path {path!r}: cannot load a Hugging Face tokenizer from it ({why}); give a "
                         "folder written by tokenizer.save_pretrained(DIR)") from None


@dataclass(frozen=True)
class Tokenization:
    """One side's tokenisation: ``kind`` in ``char | space | regex | hf``.

    Args:
        kind: see the module table.
        pattern: the regular expression of ``regex`` (each match is a token).
        path: the local tokenizer folder of ``hf``.
        lowercase: lowercase the text before splitting.

    Examples:
        >>> Tokenization("regex", pattern=r"<[A-Z]+>|\\S").split("walk <VBD>")
        ['w', 'a', 'l', 'k', '<VBD>']
        >>> Tokenization("char").join(["o", "k"]), Tokenization("space").join(["HH", "AY"])
        ('ok', 'HH AY')
    """

    kind: str = "char"
    pattern: str | None = None
    path: str | None = None
    lowercase: bool = False

    def __post_init__(self) -> None:
        if self.kind not in TOKENIZERS:
            raise ValueError(f"tokenize={self.kind!r} is not a tokenizer; choose one of {list(TOKENIZERS)}")
        if (self.kind == "regex") != (self.pattern is not None):
            raise ValueError("tokenize 'regex' needs a pattern (and only 'regex' takes one), e.g. "
                             "{tokenize: regex, pattern: '<[A-Z]+>|\\S'}")
        if (self.kind == "hf") != (self.path is not None):
            raise ValueError("tokenize 'hf' needs a path (and only 'hf' takes one): a local tokenizer folder")
        if self.pattern is not None:
            try:
                compiled = re.compile(self.pattern)
            except re.error as e:
                raise ValueError(f"pattern {self.pattern!r} is not a regular expression ({e})") from None
            if compiled.groups:
                raise ValueError(f"pattern {self.pattern!r} has capturing groups; use (?:...) so that each match "
                                 "is one token")

    @classmethod
    def of(cls, spec: str | Tokenization | dict[str, Any]) -> Tokenization:
        """From a name (``"char"``), a mapping (``{"tokenize": "regex", "pattern": ...}``) or itself.

        Examples:
            >>> Tokenization.of({"tokenize": "space"}).kind
            'space'
        """
        if isinstance(spec, Tokenization):
            return spec
        if isinstance(spec, str):
            return cls(spec)
        if isinstance(spec, dict):
            return cls(spec.get("tokenize", "char"), spec.get("pattern"), spec.get("path"),
                       bool(spec.get("lowercase", False)))
        raise TypeError(f"tokenize={spec!r} must be a name such as 'char', or a mapping such as "
                        "{'tokenize': 'regex', 'pattern': '\\\\S'}")

    def load(self) -> Tokenization:
        """Check that what the tokenisation needs is there (the ``hf`` tokenizer loads); returns self."""
        if self.kind == "hf":
            _hf_tokenizer(str(self.path))
        return self

    def split(self, text: str) -> list[str]:
        """The tokens of ``text``."""
        if self.lowercase:
            text = text.lower()
        if self.kind == "char":
            return list(text)
        if self.kind == "space":
            return text.split()
        if self.kind == "regex":
            return re.findall(str(self.pattern), text)
        return list(_hf_tokenizer(str(self.path)).tokenize(text))

    def join(self, tokens: list[str], sep: str | None = None) -> str:
        """Tokens back to text: ``sep`` when given, else the kind's own joiner (see the module table)."""
        if sep is not None:
            return sep.join(tokens)
        if self.kind == "char":
            return "".join(tokens)
        if self.kind == "hf":
            return str(_hf_tokenizer(str(self.path)).convert_tokens_to_string(tokens))
        return " ".join(tokens)
