"""Data for partwise: vocabularies, CMUdict G2P, pair files (TSV, CSV, JSON lines), padded batches, bucketed sampling.

Token ids follow :mod:`partwise.seq2seq`: ``PAD=0, UNK=1, BOS=2, EOS=3``.
"""

from partwise.data._batching import BucketBatchSampler
from partwise.data._cmudict import (
    G2PSplit,
    cmudict_path,
    load_cmudict,
    load_cmudict_splits,
    stress_labels,
    strip_stress,
)
from partwise.data._dataset import Batch, Seq2SeqDataset, Seq2SeqItem, collate
from partwise.data._errors import DataFormatError
from partwise.data._g2p import G2PData, make_g2p_datasets
from partwise.data._pairs import FORMATS, pair_format, read_pair_texts, read_pairs
from partwise.data._subset import subset_indices
from partwise.data._tokenize import TOKENIZERS, Tokenization
from partwise.data._vocab import SPECIAL_TOKENS, Vocab

__all__ = [
    "FORMATS",
    "SPECIAL_TOKENS",
    "TOKENIZERS",
    "Tokenization",
    "Batch",
    "BucketBatchSampler",
    "DataFormatError",
    "G2PData",
    "G2PSplit",
    "Seq2SeqDataset",
    "Seq2SeqItem",
    "Vocab",
    "cmudict_path",
    "collate",
    "load_cmudict",
    "load_cmudict_splits",
    "make_g2p_datasets",
    "pair_format",
    "read_pair_texts",
    "read_pairs",
    "stress_labels",
    "strip_stress",
    "subset_indices",
]
