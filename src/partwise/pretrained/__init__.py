"""Pretrained models that ship inside installed packages (no downloads at run time).

``load_g2p_en()`` builds g2p-en's GRU grapheme-to-phoneme model (``pip install 'partwise[pretrained]'``)
as a partwise :class:`~partwise.seq2seq.Seq2Seq`, ready to decode, fine-tune or take apart.

Examples:
    >>> from partwise.pretrained import load_g2p_en
    >>> g2p = load_g2p_en()  # doctest: +SKIP
    >>> g2p.predict(["partwise"])  # doctest: +SKIP
    [['P', 'AA1', 'R', 'T', 'W', 'AY2', 'Z']]
"""

from partwise.pretrained._g2p_en import (
    G2P_EN_GRAPHEMES,
    G2P_EN_MAX_STEPS,
    G2P_EN_PHONEMES,
    PretrainedG2p,
    g2p_en_path,
    load_g2p_en,
)

__all__ = [
    "G2P_EN_GRAPHEMES",
    "G2P_EN_MAX_STEPS",
    "G2P_EN_PHONEMES",
    "PretrainedG2p",
    "g2p_en_path",
    "load_g2p_en",
]
