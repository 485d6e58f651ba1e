"""Runs ``partwise`` commands in forked children of one process that has imported partwise once.

Used by ``test_kill_resume.py``: starting Python and importing torch takes seconds, forking takes
milliseconds, so dozens of killed and resumed runs fit in a test. Protocol: one JSON object a line on
stdin, ``{"args": [...], "env": {...}, "log": path}``; for each, one line on stdout with the child's
exit code, or minus the signal that killed it (``-9`` for SIGKILL). The parent never runs a torch
operation, so it has no thread pools for a fork to break; every child sets one torch thread.
"""

from __future__ import annotations

import json
import os
import sys


def _child(args: list[str], env: dict[str, str], log: str) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.environ.update(env)
    code = 3  # an exception escaped: its traceback is in the log
    try:
        from partwise.cli import main

        code = main(args)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:  # noqa: BLE001 - reported through the exit code and the log
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _preload() -> None:
    """Import once what every run imports lazily (partwise, torch._dynamo through the optimizers,
    matplotlib through the plots), so that no child pays for it."""
    import torch._dynamo  # noqa: F401

    import partwise.cli._commands  # noqa: F401

    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
        from matplotlib.figure import Figure  # noqa: F401
    except ImportError:
        pass


def main() -> None:
    import torch

    torch.set_num_threads(1)
    _preload()

    for line in sys.stdin:
        job = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(job["args"], job.get("env", {}), job["log"])
        _, status = os.waitpid(pid, 0)
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        print(json.dumps({"code": code}), flush=True)


if __name__ == "__main__":
    main()
