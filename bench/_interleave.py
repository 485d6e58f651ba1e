"""Side-by-side timing in one process: variants take turns, one epoch (or one unit of work) each.

Each variant runs in its own thread and blocks at a gate between units; the main thread opens one
gate at a time, round by round in a rotated order, and records each unit's seconds. Only one variant
computes at any moment, so a burst of load from other programs hits all of them alike, and a variant
that drives a whole training loop itself (``partwise.Trainer.fit``, Lightning's ``Trainer.fit``) can be
interleaved through a callback that calls :meth:`Gate.lap` at each epoch end.

    >>> def variant(gate):
    ...     for _ in range(3):
    ...         gate.start()
    ...         gate.lap()
    >>> times = interleave({"a": variant, "b": variant}, rounds=3)
    >>> sorted(times), len(times["a"])
    (['a', 'b'], 3)
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections.abc import Callable

__all__ = ["Gate", "interleave", "paired", "median", "load_line", "RssPeak"]


class Gate:
    """A variant's side of the turn-taking: :meth:`start` waits for its turn and starts the clock,
    :meth:`lap` records the seconds since and hands the turn back."""

    def __init__(self) -> None:
        self._go = threading.Semaphore(0)
        self._done = threading.Semaphore(0)
        self.seconds: list[float] = []
        self.error: BaseException | None = None
        self.finished = False
        self._t0 = 0.0

    def start(self) -> None:
        self._go.acquire()
        self._t0 = time.perf_counter()

    def lap(self) -> None:
        self.seconds.append(time.perf_counter() - self._t0)
        self._done.release()

    def seconds_since_start(self) -> float:
        return time.perf_counter() - self._t0

    def reset_clock(self) -> None:
        """Start the clock again: work done since :meth:`start` (inside the turn) is not counted."""
        self._t0 = time.perf_counter()

    def lap_and_start(self) -> None:
        """End one unit and wait to start the next (for callbacks between epochs)."""
        self.lap()
        self.start()


def interleave(variants: dict[str, Callable[[Gate], None]], rounds: int, threads: int = 1) -> dict[str, list[float]]:
    """Run ``rounds`` units of every variant, alternating; returns each variant's unit seconds.
    Each variant's thread uses ``threads`` intra-op threads (``torch.set_num_threads``).

    A variant must call ``gate.start()`` before and ``gate.lap()`` after each of its ``rounds``
    units (or ``start`` once, then ``lap_and_start`` between units and ``lap`` after the last).
    """
    gates = {name: Gate() for name in variants}
    workers = {}
    for name, fn in variants.items():
        def body(fn: Callable[[Gate], None] = fn, gate: Gate = gates[name]) -> None:
            try:
                import torch

                torch.set_num_threads(threads)
                fn(gate)
            except BaseException as e:  # noqa: BLE001 - reported by the main thread
                gate.error = e
            finally:
                gate.finished = True
                gate._done.release()
        workers[name] = threading.Thread(target=body, name=name, daemon=True)
        workers[name].start()
    names = list(variants)
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:  # rotated: none always runs after another
            gate = gates[name]
            gate._go.release()
            gate._done.acquire()
            if gate.error is not None:
                raise RuntimeError(f"variant {name!r} failed in round {r}") from gate.error
            if gate.finished and len(gate.seconds) < r + 1:
                raise RuntimeError(f"variant {name!r} ended after {len(gate.seconds)} of {rounds} units")
    for name, t in workers.items():
        gates[name]._go.release()  # a variant blocked in lap_and_start after its last unit
        t.join(timeout=60)
    return {name: g.seconds[:rounds] for name, g in gates.items()}


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def paired(a: list[float], b: list[float]) -> float:
    """Median over rounds of ``a[r] / b[r]`` (the two ran back to back in round ``r``)."""
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def load_line(before: float) -> str:
    """The machine's load while the benchmark ran (1-minute load average before -> after)."""
    return f"load average {before:.2f} -> {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"


class RssPeak:
    """The peak resident memory of this process while a block runs, sampled every 5 ms from
    ``/proc/self/statm`` (``ru_maxrss`` cannot tell a training peak from an earlier data-loading one).

    >>> with RssPeak() as peak:
    ...     _ = bytearray(1 << 20)
    >>> peak.peak_mib >= peak.start_mib > 0
    True
    """

    def __init__(self) -> None:
        self.start_mib = self.peak_mib = 0.0
        self._stop = threading.Event()

    @staticmethod
    def now_mib() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak_mib = max(self.peak_mib, self.now_mib())

    def __enter__(self) -> RssPeak:
        import ctypes
        import gc

        gc.collect()
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)  # give freed memory back first, so the start is honest
        except OSError:
            pass
        self.start_mib = self.peak_mib = self.now_mib()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mib = max(self.peak_mib, self.now_mib())
