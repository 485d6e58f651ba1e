"""Low-rank adapters (LoRA) as parts, through PEFT's own API (``pip install 'partwise[peft]'``).

:func:`add_lora` puts LoRA layers into chosen parts of a model and returns a part spec in which each
adapted part ``P`` keeps its base weights and gains a part ``P.lora`` (or ``P.lora_A`` and
``P.lora_B``, for LoRA+-style learning-rate ratios as ordinary per-part options). PEFT switches off
``requires_grad`` of every base weight; partwise gives it back, so the base weights are *frozen by the
plan*, not fixed, and a later phase may train them. ``import partwise`` never imports PEFT.

Examples:
    >>> import torch
    >>> from torch import nn
    >>> import partwise as pw
    >>> from partwise.peft import add_lora
    >>> model = nn.Module()
    >>> model.encoder, model.decoder = nn.Linear(4, 8), nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 3))
    >>> lora = add_lora(model, "decoder", r=2)
    >>> parts = pw.Parts(model, lora.spec)
    >>> parts.names
    ['encoder', 'decoder', 'decoder.lora']
    >>> plan = pw.Plan([pw.Phase("adapters", epochs=1, train={"decoder.lora": 1e-3}),
    ...                 pw.Phase("decoder", epochs=1, train={"decoder": 1e-4, "decoder.lora": 1e-3})])
"""

from partwise.peft._lora import (
    LoRA,
    MergeReport,
    adapter_modules,
    add_lora,
    lora_of,
    lora_state_bytes,
    merge,
    require_peft,
    save_adapter,
)

__all__ = ["LoRA", "MergeReport", "add_lora", "adapter_modules", "lora_of", "lora_state_bytes", "merge",
           "require_peft", "save_adapter"]
