"""Reference encoder–decoder models and batched decoding for partwise's seq2seq protocol.

The protocol itself (``Memory``, token ids ``PAD=0 UNK=1 BOS=2 EOS=3``, what an encoder and a
decoder must provide) is described in :mod:`partwise.seq2seq._protocol`; any model that follows it
works with the decoding functions and partwise's teacher forcing.

Example:
    >>> import torch
    >>> from partwise.seq2seq import gru_seq2seq, greedy_decode
    >>> model = gru_seq2seq(src_vocab=30, tgt_vocab=40, emb=16, hidden=32).eval()
    >>> src = torch.tensor([[5, 6, 7, 3]])
    >>> len(greedy_decode(model, src, src != 0, max_len=4))
    1
"""

from partwise.seq2seq._decoding import beam_search, greedy_decode
from partwise.seq2seq._gru import GRUDecoder, GRUEncoder, gru_seq2seq
from partwise.seq2seq._model import Seq2Seq
from partwise.seq2seq._protocol import BOS, EOS, PAD, UNK, Memory
from partwise.seq2seq._task import Seq2SeqTask, max_len_from
from partwise.seq2seq._transformer import (
    TransformerDecoder,
    TransformerEncoder,
    transformer_seq2seq,
)

__all__ = [
    "Memory",
    "PAD",
    "UNK",
    "BOS",
    "EOS",
    "Seq2Seq",
    "Seq2SeqTask",
    "max_len_from",
    "GRUEncoder",
    "GRUDecoder",
    "TransformerEncoder",
    "TransformerDecoder",
    "gru_seq2seq",
    "transformer_seq2seq",
    "greedy_decode",
    "beam_search",
]
