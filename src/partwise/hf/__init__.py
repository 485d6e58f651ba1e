"""Hugging Face encoder–decoders as partwise parts (the optional ``partwise[hf]`` extra).

* :func:`parts` — a :class:`~partwise.Parts` registry with the same names for every HF
  encoder–decoder: ``embeddings``, ``encoder``, ``decoder``, ``head``;
* :class:`Seq2SeqLMTask` — the model's own forward and loss, teacher forcing and scheduled
  sampling, ``generate``-based evaluation, and the frozen-encoder cache via ``encoder_outputs=``;
* :func:`export` — a run's weights back into a ``from_pretrained`` directory;
* :class:`PartwiseSeq2SeqTrainer` / :class:`PartwiseTrainer` — a plan inside HF's own trainers;
* :class:`AcceleratePlan` — a plan inside a hand-written ``accelerate`` loop, with exact resume.

The core (``import partwise``) never imports ``transformers``; this subpackage does.
"""

from __future__ import annotations

try:
    import transformers  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError("partwise.hf needs the transformers package: pip install 'partwise[hf]'") from e

from ._accelerate import AcceleratePlan
from ._data import Seq2SeqLMCollator, Seq2SeqLMDataset
from ._export import export
from ._parts import PART_NAMES, Structure, parts, spec, structure, untie_parts
from ._task import Encoding, Seq2SeqLMTask
from ._teacher_forcing import decoder_logits, shift_right
from ._trainer import PLAN_STATE_NAME, PartwiseSeq2SeqTrainer, PartwiseTrainer, PlanLR

__all__ = [
    "AcceleratePlan", "PART_NAMES", "PLAN_STATE_NAME", "Encoding", "PartwiseSeq2SeqTrainer", "PartwiseTrainer",
    "PlanLR",
    "Seq2SeqLMCollator", "Seq2SeqLMDataset", "Seq2SeqLMTask", "Structure", "decoder_logits", "export", "parts",
    "shift_right", "spec", "structure", "untie_parts",
]
