"""partwise plans inside PyTorch Lightning (the optional ``partwise[lightning]`` extra).

* :class:`PartwisePlan` — a callback that follows a :class:`~partwise.Plan` through
  :class:`~partwise.PlanDriver`: freezing, per-part options and warmup, eval-pinned frozen parts,
  DDP rebuilt when what trains changes, the guard, and exact resume from Lightning checkpoints;
* :func:`plan_of` — the callback from a LightningModule, for ``configure_optimizers``;
* :func:`manual_step` — one step of every per-part optimizer under manual optimization (plans
  with ``separate=True`` phases).

Tested with Lightning 2.6. The core (``import partwise``) never imports Lightning; this subpackage does.
"""

from __future__ import annotations

try:
    import lightning.pytorch  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError("partwise.lightning needs the lightning package: pip install 'partwise[lightning]'") from e

from ._callback import PartwisePlan, manual_step, plan_of

__all__ = ["PartwisePlan", "manual_step", "plan_of"]
