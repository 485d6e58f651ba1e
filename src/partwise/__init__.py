"""partwise: train PyTorch encoder–decoder models part by part.

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

from ._average import average_checkpoints
from ._cache import EncoderCache, PhaseCache
from ._callbacks import Callback
from ._checkpoint import epoch_end_checkpoints, load_weights, resolve_checkpoint
from ._driver import PlanDriver
from ._errors import (
    CacheRefused,
    CheckpointError,
    CheckpointNotFound,
    ConfigError,
    FrozenPartChanged,
    PartError,
    PartwiseError,
)
from ._freezing import freeze, unfreeze
from ._guard import FrozenGuard, GradReport, PartGrad, fingerprint, grad_report
from ._optim import (
    OptimizerSet,
    build_optimizer,
    check_optimizer,
    kept_state_bytes,
    load_state_by_name,
    optimizer_class,
    reconfigure,
    state_bytes,
)
from ._parts import Part, Parts, SharedTensor
from ._plan import Phase, PhaseSpan, Plan
from ._schedule import LRSchedule
from ._surgery import (
    TokenTable,
    TransferReport,
    VocabTransfer,
    load_part,
    replace_module,
    transfer_state,
)
from ._task import LossTask, StepContext, Task
from ._trainer import EarlyStopping, NonFiniteLoss, Trainer
from ._untie import Untied, UntieReport, untie

__version__ = "0.1.0"


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
