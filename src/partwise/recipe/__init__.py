"""Recipes as a library: the schema a recipe is validated against and the task-kind protocol.

The ``partwise`` CLI reads YAML files into a :class:`Recipe` and runs it with the
:class:`Kind` its ``task.name`` names (:func:`get_kind`); task kinds (:mod:`partwise.tasks`, or your
own) import what they need from here, never from the CLI.

Examples:
    >>> from partwise.recipe import validate
    >>> recipe = validate({"plan": [{"name": "all", "epochs": 1, "train": {"decoder": 1e-3}}]}, "inline")
    >>> recipe.task.name, recipe.training.best_metric
    ('seq2seq', 'wer')
"""

from partwise.recipe._args import (
    DigitsModelArgs,
    DigitsTaskArgs,
    GRUArgs,
    HFArgs,
    NoArgs,
    Seq2SeqTaskArgs,
    StressModelArgs,
    StressTaskArgs,
    TransformerArgs,
    args_problems,
    signature_schema,
)
from partwise.recipe._kinds import (
    Kind,
    KindData,
    declared_metrics,
    default_best,
    error_names,
    get_kind,
    kind_class,
    kind_names,
    register_kind,
    training_subset,
)
from partwise.recipe._reference import field_comments, recipe_keys_markdown
from partwise.recipe._resolve import import_object
from partwise.recipe._schema import (
    AdaptersConfig,
    CharSide,
    CmudictData,
    DigitsData,
    EarlyStoppingConfig,
    EvalConfig,
    FactoryResolver,
    HFSide,
    InitConfig,
    ModelConfig,
    PairsData,
    PhaseConfig,
    Recipe,
    RegexSide,
    ScheduleConfig,
    SpaceSide,
    TaskConfig,
    TeacherForcingConfig,
    TrainingConfig,
    apply_overrides,
    build_teacher_forcing,
    dump,
    validate,
)

__all__ = [
    "AdaptersConfig",
    "recipe_keys_markdown",
    "field_comments",
    "training_subset",
    "TaskConfig",
    "CmudictData",
    "DigitsData",
    "CharSide",
    "SpaceSide",
    "RegexSide",
    "HFSide",
    "PairsData",
    "ModelConfig",
    "ScheduleConfig",
    "EarlyStoppingConfig",
    "TrainingConfig",
    "EvalConfig",
    "FactoryResolver",
    "InitConfig",
    "Kind",
    "KindData",
    "PhaseConfig",
    "Recipe",
    "DigitsModelArgs",
    "DigitsTaskArgs",
    "GRUArgs",
    "HFArgs",
    "NoArgs",
    "Seq2SeqTaskArgs",
    "StressModelArgs",
    "StressTaskArgs",
    "TransformerArgs",
    "get_kind",
    "kind_class",
    "kind_names",
    "register_kind",
    "import_object",
    "TeacherForcingConfig",
    "apply_overrides",
    "build_teacher_forcing",
    "args_problems",
    "declared_metrics",
    "default_best",
    "dump",
    "error_names",
    "signature_schema",
    "validate",
]
