"""Seq2seq for partwise: the encoder–decoder protocol, reference models, teacher forcing and
scheduled sampling, batched decoding, and the task that trains them.

The protocol (``Memory``, token ids ``PAD=0 UNK=1 BOS=2 EOS=3``, what an encoder and a decoder must
provide) is described below; any model that follows it works with the decoding
functions and :class:`TeacherForcing`. A plan phase sets teacher forcing as a task option,
``pw.Phase(..., task_options={"teacher_forcing": TeacherForcing(tf_linear(c=1e-4))})``; its
schedules (``tf_constant``, ``tf_linear``, ``tf_exponential``, ``tf_inverse_sigmoid``) give the
probability of feeding the gold token and are unrelated to the learning-rate
:class:`~partwise.LRSchedule`.

Examples:
    >>> import torch
    >>> from partwise.seq2seq import gru_seq2seq, greedy_decode
    >>> model = gru_seq2seq(src_vocab=30, tgt_vocab=40, emb=16, hidden=32).eval()
    >>> src = torch.tensor([[5, 6, 7, 3]])
    >>> len(greedy_decode(model, src, src != 0, max_len=4))
    1
"""

from partwise.seq2seq import _protocol
from partwise.seq2seq._decoding import MaxLen, beam_search, greedy_decode
from partwise.seq2seq._ensemble import Ensemble, EnsembleMemory
from partwise.seq2seq._gru import GRUDecoder, GRUEncoder, gru_seq2seq
from partwise.seq2seq._model import Seq2Seq
from partwise.seq2seq._protocol import BOS, EOS, PAD, UNK, Decoder, Encoder, Memory
from partwise.seq2seq._task import Seq2SeqTask, max_len_from
from partwise.seq2seq._teacher_forcing import (
    TEACHER_FORCING,
    ConstantTFSchedule,
    ExponentialTFSchedule,
    InverseSigmoidTFSchedule,
    LinearTFSchedule,
    TeacherForcing,
    TeacherForcingStats,
    TFSchedule,
    phase_teacher_forcing,
    tf_constant,
    tf_exponential,
    tf_inverse_sigmoid,
    tf_linear,
    tf_schedule_from_dict,
)
from partwise.seq2seq._transformer import (
    TransformerCache,
    TransformerDecoder,
    TransformerEncoder,
    transformer_seq2seq,
)

__doc__ = f"{__doc__}\n{_protocol.__doc__}"  # the protocol is documented once, where it is defined

__all__ = [
    "Ensemble",
    "EnsembleMemory",
    "Memory",
    "Encoder",
    "Decoder",
    "MaxLen",
    "TransformerCache",
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
    "TEACHER_FORCING",
    "TeacherForcing",
    "TeacherForcingStats",
    "TFSchedule",
    "ConstantTFSchedule",
    "LinearTFSchedule",
    "ExponentialTFSchedule",
    "InverseSigmoidTFSchedule",
    "phase_teacher_forcing",
    "tf_constant",
    "tf_linear",
    "tf_exponential",
    "tf_inverse_sigmoid",
    "tf_schedule_from_dict",
]
