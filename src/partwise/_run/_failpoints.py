"""Fail points: named moments at which a test kills the process, to prove a run survives a kill there.

Off unless the environment asks for them (the cost is one dictionary lookup per point):

- ``PARTWISE_KILL_AT=N``: the process sends itself ``SIGKILL`` at the N-th fail point it reaches
  (counting every point, 1-based), as ``kill -9`` would at that moment.
- ``PARTWISE_FAILPOINT_TRACE=FILE``: every point reached is appended to ``FILE``, one name a line, so a
  test can list the moments of an uninterrupted run and choose where to kill a second one.

The points sit between the writes that make up a step, an epoch end, a checkpoint and the report;
``tests/cli/test_kill_resume.py`` kills a training run at seeded random points among them.
"""

from __future__ import annotations

import os
import signal

__all__ = ["reached"]

KILL_AT, TRACE = "PARTWISE_KILL_AT", "PARTWISE_FAILPOINT_TRACE"
_count = 0


def reached(name: str) -> None:
    """Fail point ``name``: record it and/or kill the process here, if the environment asks to."""
    env = os.environ
    if KILL_AT not in env and TRACE not in env:
        return
    global _count
    _count += 1
    trace = env.get(TRACE)
    if trace:
        with open(trace, "a", encoding="utf-8") as f:
            f.write(f"{name}\n")
    if env.get(KILL_AT) == str(_count):
        os.kill(os.getpid(), signal.SIGKILL)
