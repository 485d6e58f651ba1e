"""Part specs for Hugging Face encoder–decoders, found from the model's own structure.

Every model gets the same part names: ``encoder``, ``decoder``, ``embeddings`` (the token embedding
shared by encoder and decoder, when there is one) and ``head`` (the output projection, when it is not
the same tensor as an embedding). Each tensor, under all its names, lands in exactly one part, so any
part can be frozen on its own.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from .._errors import PartError
from .._model._parts import Parts
from .._model._untie import UntieReport, untie

__all__ = ["parts", "spec", "structure", "untie_parts", "Structure", "PART_NAMES"]

PART_NAMES = ("embeddings", "encoder", "decoder", "head")


@dataclass(frozen=True)
class Structure:
    """Module paths of a model's encoder, decoder and output projection (``head``; ``None`` if absent)."""

    encoder: str
    decoder: str
    head: str | None


def _path_of(model: nn.Module, module: nn.Module | None) -> str | None:
    if module is None:
        return None
    return next((name for name, m in model.named_modules(remove_duplicate=False) if m is module), None)


def structure(model: nn.Module) -> Structure:
    """Where the encoder, decoder and output projection sit, from ``get_encoder()``,
    ``get_decoder()`` and ``get_output_embeddings()``."""
    found = {}
    for what, getter in (("encoder", "get_encoder"), ("decoder", "get_decoder")):
        get = getattr(model, getter, None)
        module = get() if callable(get) else None
        path = _path_of(model, module)
        if not path:
            raise PartError(f"partwise.hf: {type(model).__name__} has no {what} ({getter}() gives no submodule); "
                            "pass an encoder–decoder such as T5ForConditionalGeneration, or give Parts a spec")
        found[what] = path
    get_out = getattr(model, "get_output_embeddings", None)
    head = _path_of(model, get_out() if callable(get_out) else None)
    return Structure(found["encoder"], found["decoder"], head or None)


def _within(name: str, path: str | None) -> bool:
    return path is not None and (name == path or name.startswith(path + "."))


def _assign(model: nn.Module, s: Structure) -> dict[str, str]:
    """Parameter name -> part, the same part for every name of one tensor."""
    by_id: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(p), []).append(name)
    out = {}
    for names in by_id.values():
        regions = set()
        for n in names:
            owner = n.rpartition(".")[0]
            if _within(owner, s.head):
                regions.add("head")
            elif _within(owner, s.encoder):
                regions.add("encoder")
            elif _within(owner, s.decoder):
                regions.add("decoder")
        if {"encoder", "decoder"} <= regions:
            part = "embeddings"
        elif "encoder" in regions or "decoder" in regions:
            part = "encoder" if "encoder" in regions else "decoder"  # an embedding tied to the head stays with it
        elif "head" in regions:
            part = "head"
        else:
            part = "decoder"  # outside both (enc_to_dec_proj): runs on encoder outputs, trains with the decoder
        out.update(dict.fromkeys(names, part))
    return out


def _selector(name_or_path: str, is_module: bool) -> str:
    return name_or_path if is_module else "re:" + re.escape(name_or_path)


def _subtree_names(names: Sequence[str], path: str) -> list[str]:
    return [n for n in names if n.rpartition(".")[0] == path or n.startswith(path + ".")]


def spec(model: nn.Module) -> dict[str, list[str]]:
    """The part spec :func:`parts` uses: part name -> selectors (module paths, ``!`` exclusions and
    ``re:`` exact parameter names where a module holds tensors of two parts).

    Examples:
        >>> from transformers import T5Config, T5ForConditionalGeneration
        >>> model = T5ForConditionalGeneration(T5Config(vocab_size=32, d_model=8, d_kv=4, d_ff=16,
        ...                                             num_layers=1, num_heads=2))
        >>> spec(model)["encoder"]
        ['encoder', '!encoder.embed_tokens']
    """
    s = structure(model)
    assign = _assign(model, s)
    names = list(assign)

    def wholly(path: str, part: str) -> bool:
        return all(assign[n] == part for n in _subtree_names(names, path))

    roots = {"encoder": [s.encoder], "decoder": [s.decoder], "head": [s.head] if s.head else []}
    out: dict[str, list[str]] = {}
    for part in PART_NAMES:
        mine = [n for n in names if assign[n] == part]
        if not mine:
            continue
        sels: list[str] = []
        for root in roots.get(part, []):
            sels.append(root)
            for n in _subtree_names(names, root):
                if assign[n] != part:
                    owner = n.rpartition(".")[0]
                    top = owner
                    while top != root and "." in top and wholly(top.rpartition(".")[0], assign[n]):
                        top = top.rpartition(".")[0]  # exclude the largest module holding only foreign tensors
                    foreign = top != root and wholly(top, assign[n])
                    sel = "!" + (top if foreign else _selector(n, False))
                    if sel not in sels:
                        sels.append(sel)
        covered = {n for r in roots.get(part, []) for n in _subtree_names(names, r)}
        for n in mine:
            if n in covered:
                continue
            owner = n.rpartition(".")[0]
            sel = _selector(owner if owner and wholly(owner, part) else n, bool(owner) and wholly(owner, part))
            if sel not in sels:
                sels.append(sel)
            covered |= set(_subtree_names(names, owner)) if sel == owner else {n}
        out[part] = sels
    return out


def untie_parts(model: nn.Module, which: bool | Sequence[str]) -> UntieReport:
    """Untie tensors between parts: ``True`` gives the encoder and the head their own copies (the
    decoder keeps the original), a list names the parts (``"encoder"``, ``"decoder"``, ``"head"``)
    that get their own copies."""
    s = structure(model)
    paths = {"encoder": s.encoder, "decoder": s.decoder, "head": s.head}
    if which is True:
        names: Sequence[str] = ["encoder", "head"] if s.head else ["encoder"]
    elif which is False:
        return UntieReport()
    elif isinstance(which, str) or not isinstance(which, Sequence):
        raise TypeError(f"untie={which!r} must be True, False or a list of parts such as ['encoder', 'head']")
    else:
        names = which
    bad = [n for n in names if n not in paths or paths[n] is None]
    if bad:
        have = [n for n, p in paths.items() if p]
        raise PartError(f"untie: {bad[0]!r} is not a part that can be untied; choose from {have}")
    return untie(model, *[p for n in names if (p := paths[n]) is not None])


def parts(model: nn.Module, untie: bool | Sequence[str] = False) -> Parts:
    """A :class:`~partwise.Parts` registry with the same part names for every HF encoder–decoder.

    Args:
        model: a Hugging Face encoder–decoder (T5/mT5/UMT5, BART/mBART, Marian, Pegasus, M2M100/NLLB,
            Whisper, Encoder/Vision/SpeechEncoderDecoderModel, ...).
        untie: ``True`` gives the encoder and the head their own copies of a shared embedding (see
            :func:`untie_parts`); a list such as ``["head"]`` unties only those parts.

    Examples:
        >>> from transformers import BartConfig, BartForConditionalGeneration
        >>> model = BartForConditionalGeneration(BartConfig(vocab_size=32, d_model=8, encoder_layers=1,
        ...     decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
        ...     encoder_ffn_dim=16, decoder_ffn_dim=16, max_position_embeddings=32))
        >>> parts(model).names
        ['embeddings', 'encoder', 'decoder']
        >>> parts(model, untie=True).names
        ['encoder', 'decoder', 'head']
    """
    untie_parts(model, untie)
    return Parts(model, spec(model))
