"""LoRA layers in chosen parts, with PEFT's ``inject_adapter_in_model``; saving, merging."""

from __future__ import annotations

import copy
import os
import re
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from .._errors import ConfigError
from .._model._parts import Parts
from .._run._surgery import replace_module

__all__ = ["LoRA", "MergeReport", "add_lora", "adapter_modules", "lora_of", "merge", "save_adapter", "require_peft",
           "lora_state_bytes"]

ADAPTER = "default"  # PEFT's adapter name; one adapter per model
LORA_PARAM = r"\.lora_(A|B)\.[^.]+\.weight"  # a LoRA parameter's name under its layer (adapter name, weight)
PEFT_PREFIX = "base_model.model."  # how PeftModel.save_pretrained names the tensors it writes


def require_peft() -> Any:
    """The ``peft`` package, or a :class:`~partwise.ConfigError` saying how to install it."""
    try:
        import peft
    except ImportError:
        raise ConfigError(["adapters need the PEFT library: pip install 'partwise[peft]'"]) from None
    return peft


def adapter_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Module path -> PEFT adapter layer, for every adapter layer in ``model``."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return {path: m for path, m in model.named_modules() if isinstance(m, BaseTunerLayer)}  # type: ignore[misc]


@dataclass(frozen=True)
class MergeReport:
    """What :meth:`LoRA.merge` folded into the base weights."""

    modules: tuple[str, ...]  # the adapted module paths, each now its base layer again
    parts: tuple[str, ...]  # the adapter parts that are gone (their weights are in the base parts)
    spec: dict[str, list[str]] = field(default_factory=dict)  # the part spec of the merged model

    def __str__(self) -> str:
        return (f"merged {len(self.modules)} LoRA layer(s) of {', '.join(self.parts)} into their base weights; "
                f"parts now: {', '.join(self.spec)}")


@dataclass(frozen=True)
class LoRA:
    """The LoRA layers :func:`add_lora` added: where, with which PEFT config, and the part spec."""

    config: Any  # the peft.LoraConfig used
    spec: dict[str, list[str]]  # part -> selectors, with the adapter parts
    base_spec: dict[str, list[str]]  # the spec without them (what a merged model uses)
    targets: dict[str, tuple[str, ...]]  # adapted part -> module paths given LoRA layers

    @property
    def adapter_parts(self) -> list[str]:
        return [p for p in self.spec if p not in self.base_spec]

    def merge(self, model: nn.Module) -> MergeReport:
        """Fold every LoRA layer into its base weight (``W + B A * scale``) and put the base layer back
        in its place: the model is a plain model again (build its ``Parts`` anew from ``report.spec``)."""
        report = merge(model)
        return MergeReport(report.modules, tuple(self.adapter_parts), dict(self.base_spec))

    def save(self, model: nn.Module, out_dir: str | os.PathLike[str], base_model: str | None = None) -> Path:
        """:func:`save_adapter`: the adapters as a PEFT adapter folder."""
        return save_adapter(model, out_dir, base_model)


def merge(model: nn.Module) -> MergeReport:
    """Fold every PEFT adapter layer of ``model`` into its base weight and put the base layer back in
    its place (what ``partwise export`` does to a run trained with adapters)."""
    layers = adapter_modules(model)
    if not layers:
        raise ConfigError(["merge: the model has no adapter layers (merged already?)"])
    for path, layer in layers.items():
        layer_: Any = layer
        layer_.merge(safe_merge=True)  # raises if a merged weight is not finite
        replace_module(model, path, layer_.get_base_layer())
    if hasattr(model, "peft_config"):
        del model.peft_config  # PEFT's bookkeeping of the adapters that are gone
    return MergeReport(tuple(layers), ())


def save_adapter(model: nn.Module, out_dir: str | os.PathLike[str], base_model: str | None = None) -> Path:
    """Write ``model``'s adapters as a PEFT adapter folder (``adapter_config.json`` and
    ``adapter_model.safetensors``) that ``PeftModel.from_pretrained(base, out_dir)`` loads; only the
    adapter weights (small). ``out_dir`` must not exist; it appears whole or not at all."""
    from safetensors.torch import save_file

    from peft import get_peft_model_state_dict

    out = Path(out_dir)
    if out.exists():
        raise FileExistsError(f"{str(out)!r} exists; give a new folder for the adapter")
    configs = getattr(model, "peft_config", None)
    if not isinstance(configs, dict) or ADAPTER not in configs:
        raise ConfigError(["save_adapter: the model has no adapters (add_lora adds them)"])
    state = get_peft_model_state_dict(model, adapter_name=ADAPTER)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        save_file({PEFT_PREFIX + k: v.detach().contiguous().cpu() for k, v in state.items()},
                  str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
        config = copy.copy(configs[ADAPTER])
        if base_model is not None:
            config.base_model_name_or_path = base_model
        config.save_pretrained(str(tmp))
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _default_spec(model: nn.Module) -> dict[str, list[str]]:
    return {name: [name] for name, _ in model.named_children()}


def _matches(path: str, targets: Sequence[str] | None) -> bool:
    """A module path chosen by ``targets``: its last name, or the whole path, equals one of them."""
    return targets is None or path.rpartition(".")[2] in targets or path in targets


def add_lora(
    model: nn.Module,
    on: str | Iterable[str],
    *,
    spec: Mapping[str, str | Sequence[str]] | None = None,
    r: int = 8,
    alpha: float = 16.0,
    dropout: float = 0.0,
    targets: Sequence[str] | None = None,
    split: bool = False,
) -> LoRA:
    """Add LoRA layers (Hu et al. 2021) to the ``nn.Linear`` modules of parts ``on`` of ``model``, in place.

    Args:
        on: the part(s) to adapt, named as in ``spec``.
        spec: the model's part spec (default: one part per top-level child; for a Hugging Face model,
            ``partwise.hf.spec(model)``).
        r, alpha, dropout: the LoRA rank, scaling (``alpha / r``) and dropout on the layer's input.
        targets: module names (the last component, e.g. ``["q", "v"]``) or full paths to adapt;
            default: every ``nn.Linear`` of the part.
        split: give each adapted part two adapter parts, ``P.lora_A`` and ``P.lora_B`` (LoRA+,
            Hayou et al. 2024, trains B at a higher learning rate than A), instead of ``P.lora``.

    Returns:
        A :class:`LoRA` whose ``spec`` builds the parts (``pw.Parts(model, lora.spec)``).

    A module whose weight is tied to another (an output layer sharing the embedding) is refused:
    a LoRA delta on one of them would untie them silently; untie it first (``pw.untie``).
    """
    peft = require_peft()
    names = [on] if isinstance(on, str) else list(on)
    given = spec if spec is not None else _default_spec(model)
    base_spec = {k: [v] if isinstance(v, str) else list(v) for k, v in given.items()}
    existing = adapter_modules(model)
    errors = [f"adapters: {p!r} is not a part; the parts are {list(base_spec)}" for p in names if p not in base_spec]
    if existing:
        errors.append(f"adapters: the model has adapter layers already ({sorted(existing)[:3]}); add every "
                      "adapter in one add_lora call per part")
    if errors:
        raise ConfigError(errors)
    parts = Parts(model, base_spec)  # who owns what, by the one rule (read only; nothing is frozen)
    owner = parts.part_of()
    shared = {n for s in parts.shared() for n in s.names}
    chosen: dict[str, list[str]] = {p: [] for p in names}
    for path, module in model.named_modules():
        if not isinstance(module, nn.Linear) or not _matches(path, targets):
            continue
        part = owner.get(id(module.weight))
        if part in chosen:
            tied = [n for n in (f"{path}.weight",) if n in shared]
            if tied:
                others = next(s.names for s in parts.shared() if tied[0] in s.names)
                errors.append(f"adapters: {path!r} (part {part!r}) holds a tied tensor ({' = '.join(others)}); a LoRA "
                              "delta there would untie it silently: untie it first (pw.untie, or partwise.hf.parts("
                              "model, untie=[...])), or leave it out with targets")
            else:
                chosen[part].append(path)
    errors += [f"adapters: part {p!r} has no nn.Linear module{' named ' + str(list(targets)) if targets else ''} to "
               "adapt" for p, paths in chosen.items() if not paths]
    if errors:
        raise ConfigError(errors)
    del parts
    trainable = {id(p): p.requires_grad for p in model.parameters()}
    all_paths = [p for ps in chosen.values() for p in ps]
    config = peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout,
                             target_modules="^(" + "|".join(re.escape(p) for p in all_paths) + ")$")
    peft.inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    for p in model.parameters():  # PEFT froze the base weights; the plan decides that, not PEFT
        if id(p) in trainable:
            p.requires_grad_(trainable[id(p)])
    return _described(config, base_spec, chosen, split)


def _described(config: Any, base_spec: dict[str, list[str]], chosen: Mapping[str, Sequence[str]],
               split: bool) -> LoRA:
    new_spec = {part: [*sels, f"!re:.*{LORA_PARAM}"] for part, sels in base_spec.items()}
    for part, paths in chosen.items():
        under = "(" + "|".join(re.escape(p) for p in paths) + ")"
        if split:
            new_spec[f"{part}.lora_A"] = [rf"re:{under}\.lora_A\.[^.]+\.weight"]
            new_spec[f"{part}.lora_B"] = [rf"re:{under}\.lora_B\.[^.]+\.weight"]
        else:
            new_spec[f"{part}.lora"] = [f"re:{under}{LORA_PARAM}"]
    return LoRA(config, new_spec, base_spec, {p: tuple(v) for p, v in chosen.items()})


def lora_of(model: nn.Module, spec: Mapping[str, str | Sequence[str]] | None = None, split: bool = False) -> LoRA:
    """The :class:`LoRA` of a model that holds LoRA layers already (a copy of an adapted model, or
    one adapted elsewhere): which parts they are in, and the part spec, as :func:`add_lora` gave it."""
    layers = adapter_modules(model)
    configs = getattr(model, "peft_config", None)
    if not layers or not isinstance(configs, dict) or ADAPTER not in configs:
        raise ConfigError(["the model holds no LoRA layers (add_lora adds them)"])
    given = spec if spec is not None else _default_spec(model)
    base_spec = {k: [v] if isinstance(v, str) else list(v) for k, v in given.items()}
    parts = Parts(model, {part: [*sels, f"!re:.*{LORA_PARAM}"] for part, sels in base_spec.items()})
    owner = parts.part_of()
    chosen: dict[str, list[str]] = {}
    for path, layer in layers.items():
        base: Any = layer
        chosen.setdefault(owner[id(base.get_base_layer().weight)], []).append(path)
    return _described(configs[ADAPTER], base_spec, chosen, split)


def lora_state_bytes(model: nn.Module) -> int:
    """Bytes of the LoRA weights in ``model`` (what an adapter folder holds)."""
    return sum(p.numel() * p.element_size() for n, p in model.named_parameters() if re.search(LORA_PARAM, n))

