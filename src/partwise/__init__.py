"""partwise: train PyTorch encoder–decoder models part by part.

Examples:
    >>> import partwise as pw
    >>> from torch import nn
    >>> model = nn.Sequential()
    >>> model.add_module("encoder", nn.Linear(8, 4)); model.add_module("decoder", nn.Linear(4, 8))
    >>> parts = pw.Parts(model)
    >>> parts.freeze("encoder")
    >>> opt = pw.build_optimizer(parts, default={"name": "adamw", "lr": 1e-3})
    >>> sorted({g["part"] for g in opt.param_groups if g["params"]})
    ['decoder']
"""

from ._errors import (
    CacheRefused,
    CheckpointError,
    CheckpointNotFound,
    ConfigError,
    FrozenPartChanged,
    PartError,
    PartwiseError,
)
from ._model._freezing import freeze, unfreeze
from ._model._guard import FrozenGuard, GradReport, PartGrad, fingerprint, grad_report
from ._model._parts import Part, Parts, SharedTensor
from ._model._untie import Untied, UntieReport, untie
from ._optim._optimizers import (
    OptimizerSet,
    build_optimizer,
    check_optimizer,
    kept_state_bytes,
    load_state_by_name,
    optimizer_class,
    reconfigure,
    state_bytes,
)
from ._optim._plan import Phase, PhaseSpan, Plan
from ._optim._schedule import LRSchedule
from ._run._average import average_checkpoints
from ._run._checkpoint import epoch_end_checkpoints, load_weights, resolve_checkpoint
from ._run._surgery import (
    TokenTable,
    TransferReport,
    VocabTransfer,
    load_part,
    replace_module,
    transfer_state,
)
from ._train._cache import EncoderCache, PhaseCache
from ._train._callbacks import Callback
from ._train._driver import PlanDriver
from ._train._fsdp import plan_units, shard
from ._train._task import LossTask, StepContext, Task
from ._train._trainer import EarlyStopping, NonFiniteLoss, Trainer

__version__ = "0.2.0"  # the one place the version is written (pyproject.toml reads it)


__all__ = [
    "CacheRefused",
    "CheckpointError",
    "CheckpointNotFound",
    "ConfigError",
    "PartwiseError",
    "EarlyStopping",
    "EncoderCache",
    "PhaseCache",
    "LRSchedule",
    "LossTask",
    "NonFiniteLoss",
    "Phase",
    "PhaseSpan",
    "Plan",
    "PlanDriver",
    "StepContext",
    "Task",
    "Trainer",
    "shard",
    "plan_units",
    "Callback",
    "load_state_by_name",
    "reconfigure",
    "load_weights",
    "resolve_checkpoint",
    "average_checkpoints",
    "epoch_end_checkpoints",
    "TokenTable",
    "TransferReport",
    "VocabTransfer",
    "load_part",
    "replace_module",
    "transfer_state",
    "FrozenGuard",
    "FrozenPartChanged",
    "GradReport",
    "PartGrad",
    "OptimizerSet",
    "Part",
    "PartError",
    "Parts",
    "SharedTensor",
    "build_optimizer",
    "check_optimizer",
    "kept_state_bytes",
    "fingerprint",
    "freeze",
    "grad_report",
    "optimizer_class",
    "state_bytes",
    "unfreeze",
    "Untied",
    "UntieReport",
    "untie",
]
