"""The pretrained g2p-en grapheme-to-phoneme model as a partwise :class:`~partwise.seq2seq.Seq2Seq`.

g2p-en (Park & Kim, https://github.com/Kyubyong/g2p) ships its weights as ``checkpoint20.npz``: a
one-layer GRU encoder–decoder, embedding 256, hidden 256, no attention, 834,890 parameters. Its
decoder starts from the encoder's last hidden state with ``<s>`` and decodes greedily for at most
20 steps. The arrays map one to one onto ``nn.Embedding`` / ``nn.GRU`` (gate order r, z, n, as in
PyTorch) / ``nn.Linear``.

Token ids. partwise uses ``PAD=0 UNK=1 BOS=2 EOS=3`` (:class:`~partwise.data.Vocab`). g2p-en's
phoneme table is ``<pad> <unk> <s> </s>`` + 70 ARPAbet symbols, already in that order, so the
decoder keeps its rows as they are. Its grapheme table is ``<pad> <unk> </s> a..z`` (``</s>`` at 2,
no ``<s>``); the encoder embedding is rearranged by token name into partwise order
``<pad> <unk> <s> </s> a..z`` (with :func:`partwise.transfer_state`), so the sources
that ``Vocab.encode(list(word), add_eos=True)`` and partwise's datasets produce are read exactly as
g2p-en reads them. The ``<s>`` row, which a source never contains, is the mean of the other rows;
it makes the encoder 30 × 256 rather than 29 × 256 (835,146 parameters in all, 256 more than the
file). With these vocabularies :func:`~partwise.seq2seq.greedy_decode` (``max_len=20``) gives
g2p-en's own ``G2p.predict`` output.

The file is located with ``importlib.util.find_spec`` without importing ``g2p_en``, whose import
tries to download NLTK data.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence

from partwise._run._surgery import transfer_state
from partwise.data import SPECIAL_TOKENS, Vocab
from partwise.seq2seq import PAD, GRUDecoder, GRUEncoder, Seq2Seq, beam_search, greedy_decode

__all__ = ["PretrainedG2p", "load_g2p_en", "g2p_en_path", "G2P_EN_GRAPHEMES", "G2P_EN_PHONEMES",
           "G2P_EN_MAX_STEPS"]

#: g2p-en's grapheme table in its own id order (``g2p_en/g2p.py``, ``G2p.__init__``).
G2P_EN_GRAPHEMES: tuple[str, ...] = ("<pad>", "<unk>", "</s>", *"abcdefghijklmnopqrstuvwxyz")
#: g2p-en's phoneme table in its own id order: the four specials, then 70 stressed ARPAbet symbols.
G2P_EN_PHONEMES: tuple[str, ...] = (*SPECIAL_TOKENS, *(
    "AA0 AA1 AA2 AE0 AE1 AE2 AH0 AH1 AH2 AO0 AO1 AO2 AW0 AW1 AW2 AY0 AY1 AY2 B CH D DH EH0 EH1 EH2 "
    "ER0 ER1 ER2 EY0 EY1 EY2 F G HH IH0 IH1 IH2 IY0 IY1 IY2 JH K L M N NG OW0 OW1 OW2 OY0 OY1 OY2 "
    "P R S SH T TH UH0 UH1 UH2 UW UW0 UW1 UW2 V W Y Z ZH"
).split())
#: g2p-en's decoding limit: at most 20 phonemes per word.
G2P_EN_MAX_STEPS = 20

_FILE = "checkpoint20.npz"
_ARRAYS = ("enc_emb", "enc_w_ih", "enc_w_hh", "enc_b_ih", "enc_b_hh",
           "dec_emb", "dec_w_ih", "dec_w_hh", "dec_b_ih", "dec_b_hh", "fc_w", "fc_b")
_STATE_NAMES = {  # npz array -> parameter of Seq2Seq(GRUEncoder, GRUDecoder)
    "enc_emb": "encoder.embed.weight", "enc_w_ih": "encoder.rnn.weight_ih_l0",
    "enc_w_hh": "encoder.rnn.weight_hh_l0", "enc_b_ih": "encoder.rnn.bias_ih_l0",
    "enc_b_hh": "encoder.rnn.bias_hh_l0", "dec_emb": "decoder.embed.weight",
    "dec_w_ih": "decoder.rnn.weight_ih_l0", "dec_w_hh": "decoder.rnn.weight_hh_l0",
    "dec_b_ih": "decoder.rnn.bias_ih_l0", "dec_b_hh": "decoder.rnn.bias_hh_l0",
    "fc_w": "decoder.out.weight", "fc_b": "decoder.out.bias",
}
_INSTALL = "install it with: pip install 'partwise[pretrained]'"


def g2p_en_path() -> Path:
    """Path of the installed g2p-en's ``checkpoint20.npz``, found without importing ``g2p_en``.

    Raises:
        ModuleNotFoundError: g2p-en is not installed.
        FileNotFoundError: it is installed but the file is not where it should be.
    """
    spec = importlib.util.find_spec("g2p_en")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"the pretrained g2p-en model needs the package 'g2p-en'; {_INSTALL}")
    path = Path(next(iter(spec.submodule_search_locations))) / _FILE
    if not path.is_file():
        raise FileNotFoundError(f"g2p-en is installed but {str(path)!r} is missing; reinstall it "
                                "(pip install --force-reinstall g2p-en) or pass path= to load_g2p_en")
    return path


@dataclass(frozen=True)
class PretrainedG2p:
    """g2p-en's model with the vocabularies its ids follow.

    Attributes:
        model: ``Seq2Seq(GRUEncoder(30, 256, 256), GRUDecoder(74, 256, 256))`` in eval mode, on CPU.
        grapheme_vocab: source vocabulary, ``<pad> <unk> <s> </s>`` then ``a..z``.
        phoneme_vocab: target vocabulary, g2p-en's phoneme table (specials, then 70 ARPAbet symbols).
        path: the ``.npz`` file the weights came from.
    """

    model: Seq2Seq
    grapheme_vocab: Vocab
    phoneme_vocab: Vocab
    path: Path

    def predict(self, words: Sequence[str], lowercase: bool = True, batch_size: int = 1024, beam_size: int = 1
                ) -> list[list[str]]:
        """Phonemes of each word, at most 20 per word: by greedy decoding, as g2p-en's ``predict``
        (``beam_size=1``), or by beam search.

        Characters outside ``a..z`` read as ``<unk>``, as in g2p-en. Decoded ids map to their
        symbols as they are (a ``<pad>`` or ``<s>`` the model emits is kept, as g2p-en does). Words
        are decoded in batches of similar length (results come back in the order given).

        Args:
            words: the words.
            lowercase: lowercase each word first (g2p-en's ``predict`` expects lowercase input).
            batch_size: words decoded together.
            beam_size: 1 = greedy decoding (g2p-en's own), else beam search with that many hypotheses.
        """
        if isinstance(words, str):
            raise TypeError(f"predict() got the string {words!r}; pass a list of words, e.g. [{words!r}]")
        bad = [w for w in words if not isinstance(w, str)]
        if bad:
            raise TypeError(f"predict(): word {bad[0]!r} is not a str")
        for name, value in (("batch_size", batch_size), ("beam_size", beam_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"predict(): {name}={value!r} must be an int >= 1")
        device = next(self.model.parameters()).device
        order = sorted(range(len(words)), key=lambda i: len(words[i]))  # similar lengths pad little
        out: list[list[str]] = [[] for _ in words]
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            rows = [torch.tensor(self.grapheme_vocab.encode(list(words[i].lower() if lowercase else words[i]),
                                                            add_eos=True)) for i in chunk]
            src = pad_sequence(rows, batch_first=True, padding_value=PAD).to(device)
            if beam_size == 1:
                ids = greedy_decode(self.model, src, src != PAD, max_len=G2P_EN_MAX_STEPS)
            else:
                ids = beam_search(self.model, src, src != PAD, beam_size=beam_size, max_len=G2P_EN_MAX_STEPS)
            for i, row in zip(chunk, ids, strict=True):
                out[i] = self.phoneme_vocab.decode(row, strip_special=False)
        return out


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        missing = [k for k in _ARRAYS if k not in data.files]
        if missing:
            raise ValueError(f"{str(path)!r} is not a g2p-en checkpoint: it lacks {missing} "
                             f"(it has {sorted(data.files)})")
        return {k: data[k] for k in _ARRAYS}


def load_g2p_en(path: str | os.PathLike[str] | None = None) -> PretrainedG2p:
    """Build g2p-en's pretrained GRU encoder–decoder as a partwise model.

    Args:
        path: a ``checkpoint20.npz`` (or the folder holding it); default: the installed g2p-en's.

    Raises:
        ModuleNotFoundError: no ``path`` and g2p-en is not installed (``pip install 'partwise[pretrained]'``).
        ValueError: the file lacks an array or its shapes do not fit together.

    Examples:
        >>> g2p = load_g2p_en()  # doctest: +SKIP
        >>> g2p.predict(["partwise"])  # doctest: +SKIP
        [['P', 'AA1', 'R', 'T', 'W', 'AY2', 'Z']]
    """
    if path is None:
        file = g2p_en_path()
    else:
        file = Path(path) / _FILE if Path(path).is_dir() else Path(path)
        if not file.is_file():
            raise FileNotFoundError(f"load_g2p_en(path={str(path)!r}): no such file; give g2p-en's {_FILE}")
    arrays = _read_arrays(file)
    emb, hidden = arrays["enc_emb"].shape[1], arrays["enc_w_hh"].shape[1]
    graphemes = Vocab(G2P_EN_GRAPHEMES[3:])
    phonemes = Vocab(G2P_EN_PHONEMES[4:])
    model = Seq2Seq(GRUEncoder(len(graphemes), emb, hidden),
                    GRUDecoder(len(phonemes), emb, hidden, attention=None))
    state = {_STATE_NAMES[k]: torch.from_numpy(v) for k, v in arrays.items()}
    try:
        report = transfer_state(state, model, strict_shapes=True, vocab_map={
            "encoder.embed.weight": (G2P_EN_GRAPHEMES, graphemes)})
    except ValueError as e:
        raise ValueError(f"{str(file)!r} does not fit g2p-en's architecture: {e}") from None
    if report.missing or report.unexpected:
        raise ValueError(f"{str(file)!r} does not fit g2p-en's architecture: {report}")
    return PretrainedG2p(model.eval(), graphemes, phonemes, file)
