"""Token vocabulary with the fixed special ids shared by all of partwise's seq2seq tools."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from partwise.seq2seq._protocol import BOS, EOS, PAD, UNK

__all__ = ["Vocab", "SPECIAL_TOKENS"]

#: Special tokens, at ids ``PAD=0, UNK=1, BOS=2, EOS=3``.
SPECIAL_TOKENS: tuple[str, str, str, str] = ("<pad>", "<unk>", "<s>", "</s>")


class Vocab:
    """Maps tokens to ids: the four specials at ids 0..3, then the other tokens in sorted order.

    Args:
        tokens: the non-special tokens, in id order (ids 4, 5, ...). Must be distinct strings and
            must not include the special tokens.

    Examples:
        >>> v = Vocab.build([["b", "a"], ["a", "c"]])
        >>> v.tokens
        ['<pad>', '<unk>', '<s>', '</s>', 'a', 'b', 'c']
        >>> v.encode(["c", "z"], add_eos=True)
        [6, 1, 3]
        >>> v.decode([4, 5, 3, 6])
        ['a', 'b']
    """

    def __init__(self, tokens: Iterable[str]) -> None:
        items = list(tokens)
        seen: set[str] = set()
        for token in items:
            if not isinstance(token, str) or not token:
                raise TypeError(
                    f"Vocab token {token!r} is not a non-empty str; tokens must be strings"
                )
            if token in SPECIAL_TOKENS:
                raise ValueError(
                    f"Vocab token {token!r} is a special token; pass only ordinary tokens, "
                    f"the specials {list(SPECIAL_TOKENS)} are added at ids 0..3"
                )
            if token in seen:
                raise ValueError(f"Vocab token {token!r} appears twice; tokens must be distinct")
            seen.add(token)
        self._itos: list[str] = [*SPECIAL_TOKENS, *items]
        self._stoi: dict[str, int] = {token: i for i, token in enumerate(self._itos)}

    @classmethod
    def build(cls, token_sequences: Iterable[Iterable[str]], min_count: int = 1) -> Vocab:
        """Collect the tokens seen at least ``min_count`` times, sorted, after the specials.

        Special tokens found in the data are not added twice.

        Examples:
            >>> len(Vocab.build([["x", "y", "x"]], min_count=2))
            5
        """
        if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
            raise ValueError(f"min_count={min_count!r} must be an int >= 1")
        counts: Counter[str] = Counter()
        for sequence in token_sequences:
            if isinstance(sequence, str):
                raise TypeError(
                    f"Vocab.build got the string {sequence!r} as a token sequence; "
                    "pass lists of tokens, e.g. list(word) for characters"
                )
            counts.update(sequence)
        kept = [t for t, n in counts.items() if n >= min_count and t not in SPECIAL_TOKENS]
        return cls(sorted(kept))

    @property
    def tokens(self) -> list[str]:
        """All tokens in id order, specials first."""
        return list(self._itos)

    def __len__(self) -> int:
        return len(self._itos)

    def __contains__(self, token: object) -> bool:
        return token in self._stoi

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Vocab):
            return NotImplemented
        return self._itos == other._itos

    def __hash__(self) -> int:
        return hash(tuple(self._itos))

    def __repr__(self) -> str:
        preview = ", ".join(self._itos[4:10])
        more = ", ..." if len(self._itos) > 10 else ""
        return f"Vocab(size={len(self)}, tokens=[{preview}{more}])"

    def index(self, token: str) -> int:
        """Id of ``token``, or ``UNK`` if it is not in the vocabulary."""
        return self._stoi.get(token, UNK)

    def encode(
        self, tokens: Iterable[str], add_bos: bool = False, add_eos: bool = False
    ) -> list[int]:
        """Ids of ``tokens`` (unknown tokens become ``UNK``), optionally framed by BOS/EOS.

        Examples:
            >>> Vocab(["a"]).encode(["a"], add_bos=True, add_eos=True)
            [2, 4, 3]
        """
        if isinstance(tokens, str):
            raise TypeError(
                f"Vocab.encode got the string {tokens!r}; pass a list of tokens, "
                "e.g. list(word) or text.split()"
            )
        get = self._stoi.get
        ids = [get(token, UNK) for token in tokens]
        if add_bos:
            ids.insert(0, BOS)
        if add_eos:
            ids.append(EOS)
        return ids

    def decode(self, ids: Sequence[int] | torch.Tensor, strip_special: bool = True) -> list[str]:
        """Tokens for ``ids``.

        With ``strip_special`` (default) decoding stops at the first EOS and PAD/BOS are dropped;
        ``UNK`` stays as ``"<unk>"`` so that it still counts as a token. Without it every id is
        mapped as is.

        Examples:
            >>> Vocab(["a"]).decode([2, 4, 1, 3, 4])
            ['a', '<unk>']
        """
        values = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        out: list[str] = []
        size = len(self._itos)
        for i in values:
            if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < size:
                raise ValueError(f"Vocab.decode got id {i!r}; ids must be ints in [0, {size})")
            if strip_special:
                if i == EOS:
                    break
                if i in (PAD, BOS):
                    continue
            out.append(self._itos[i])
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form, to be saved next to a model.

        Examples:
            >>> Vocab.from_dict(Vocab(["a"]).to_dict()) == Vocab(["a"])
            True
        """
        return {"tokens": list(self._itos)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Vocab:
        """Rebuild a vocabulary saved with :meth:`to_dict`."""
        if not isinstance(data, Mapping) or "tokens" not in data:
            raise ValueError(
                f"Vocab.from_dict expects a mapping with a 'tokens' list as written by "
                f"Vocab.to_dict(), got {type(data).__name__}"
            )
        tokens = list(data["tokens"])
        if tuple(tokens[:4]) != SPECIAL_TOKENS:
            raise ValueError(
                f"Vocab.from_dict: saved tokens start with {tokens[:4]!r}, expected the specials "
                f"{list(SPECIAL_TOKENS)}; the data was not written by Vocab.to_dict()"
            )
        return cls(tokens[4:])
