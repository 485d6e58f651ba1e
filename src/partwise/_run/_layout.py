"""Every name in a run folder, spelled once: the run folder's layout.

A run folder (``run_dir`` of a recipe, or a :class:`~partwise.Trainer`'s ``run_dir``)::

    partwise-run.json        the marker `partwise train` writes first (what --overwrite may replace)
    config.yaml              the resolved recipe the run was trained with
    artifacts.json           what the task kind saved to rebuild its data (vocabularies)
    checkpoints/             step-00000120/ (meta.json, state.pt, part-<name>.safetensors), latest, best
    cache/                   the frozen-encoder cache's spill files
    log.txt, metrics.csv, steps.csv, phases.csv, plan_changes.txt, tensorboard/
    report.md, loss.png, lr.png, teacher_forcing.png

Hidden names (``.<name>.tmp-<pid>``, ``.<name>.old-<pid>``) are debris of killed writers.
:class:`partwise._run._runfolder.RunFolder` reads and writes the folder;
:mod:`partwise._run._checkpoint` reads and writes what is inside ``checkpoints/``.
"""

from __future__ import annotations

__all__ = ["MARKER", "CONFIG", "ARTIFACTS", "CHECKPOINTS", "CACHE", "LOG", "METRICS", "STEPS", "PHASES",
           "PLAN_CHANGES", "REPORT", "TENSORBOARD", "PLOTS", "META", "STATE", "LATEST", "BEST", "POINTERS",
           "AVERAGED", "RUN_LAYOUT"]

MARKER = "partwise-run.json"
CONFIG = "config.yaml"
ARTIFACTS = "artifacts.json"
CHECKPOINTS = "checkpoints"
CACHE = "cache"
LOG = "log.txt"
METRICS, STEPS, PHASES = "metrics.csv", "steps.csv", "phases.csv"
PLAN_CHANGES = "plan_changes.txt"  # one line per plan change accepted on resume
REPORT = "report.md"
TENSORBOARD = "tensorboard"
PLOTS = ("loss.png", "lr.png", "teacher_forcing.png")

# inside checkpoints/
META, STATE = "meta.json", "state.pt"  # meta.json is written last: its presence marks a checkpoint complete
LATEST, BEST = "latest", "best"  # pointer files: the name of a checkpoint folder beside them
POINTERS = (LATEST, BEST)
AVERAGED = "averaged"  # the average of the last epoch-end checkpoints (training.average_last)

#: the names a run folder is made of; a folder holding anything else is not a run (never removed)
RUN_LAYOUT = frozenset({MARKER, CONFIG, ARTIFACTS, CHECKPOINTS, CACHE, LOG, METRICS, STEPS, PHASES, PLAN_CHANGES,
                        REPORT, TENSORBOARD, *PLOTS})
