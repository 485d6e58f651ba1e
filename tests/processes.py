"""Running torchrun (and the processes it starts) from a test, bounded: a rank that dies or hangs
fails the test within ``timeout`` seconds with what the processes printed, and leaves no process behind."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(ranks: int) -> list[str]:
    """The command that starts a script on ``ranks`` local processes (plain Python for one)."""
    if ranks == 1:
        return [sys.executable]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks), "--master_addr",
            "127.0.0.1", "--master_port", str(free_port())]


def clean_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **extra}
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def run_bounded(cmd: list[str], timeout: float, env: dict[str, str] | None = None,
                cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    """``subprocess.run`` in a process group of its own: on timeout every process in it is killed
    (torchrun's ranks too, which a plain ``timeout=`` leaves running) and the test fails saying so."""
    proc = subprocess.Popen(cmd, env=env if env is not None else clean_env(), cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{' '.join(cmd[-3:])}: no result in {timeout:.0f} s (a rank died or waits in a collective); "
                    f"all its processes were killed. Last output:\n{err[-3000:]}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
