"""Running torchrun (and the processes it starts) from a test, bounded: a rank that dies or hangs
fails the test within ``timeout`` seconds with what the processes printed, and leaves no process behind."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

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


def _descendants(pid: int) -> set[int]:
    """The processes below ``pid`` (torchrun starts its ranks in sessions of their own, so a process
    group kill misses them); empty without psutil or once ``pid`` is gone."""
    try:
        import psutil

        return {c.pid for c in psutil.Process(pid).children(recursive=True)}
    except Exception:  # noqa: BLE001 - no psutil, or the process ended: nothing more to learn
        return set()


def _kill(pid: int, others: set[int]) -> None:
    for target in others:
        try:
            os.kill(target, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_bounded(cmd: list[str], timeout: float, env: dict[str, str] | None = None,
                cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    """``subprocess.run`` in a process group of its own, bounded: on timeout every process it started
    is killed (torchrun's ranks too, which run in sessions of their own and which a plain ``timeout=``
    leaves running, holding the output pipes open) and the test fails saying so."""
    proc = subprocess.Popen(cmd, env=env if env is not None else clean_env(), cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    started, known = time.monotonic(), set()
    while True:
        known |= _descendants(proc.pid)  # remembered: a rank outliving torchrun is reparented away
        try:
            out, err = proc.communicate(timeout=1.0)
            break
        except subprocess.TimeoutExpired:
            if time.monotonic() - started < timeout:
                continue
            _kill(proc.pid, known)
            try:
                out, err = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                out, err = "", "(no output: a process still held the pipes)"
            pytest.fail(f"{' '.join(cmd[-3:])}: no result in {timeout:.0f} s (a rank died, hangs in a collective or "
                        f"at exit); all its processes were killed. Last output:\n{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
