"""What partwise's process-wide optimizer step pre-hook costs any optimizer in the process.

partwise registers one ``torch.optim`` step pre-hook (it keeps held, i.e. frozen, parameters from being
updated by optimizers partwise did not build). This script times ``SGD.step()`` on an optimizer of 1 or
10,000 tensors while 0 or 10,000 tensors of *another* model are held frozen, against the same step with
the hook removed, side by side in one run (variants take turns, round by round).

    python bench/step_prehook.py            # prints one line per variant: median microseconds per step
    python bench/step_prehook.py --quick
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

import partwise as pw
from partwise._model import _freezing

SIZES = (1, 10_000)


def tensors(n: int) -> list[nn.Parameter]:
    return [nn.Parameter(torch.zeros(1)) for _ in range(n)]


def step_seconds(opt: torch.optim.Optimizer, steps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(steps):
        opt.step()
    return (time.perf_counter() - t0) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds")
    args = ap.parse_args()
    rounds = 3 if args.quick else 7
    torch.set_num_threads(1)

    other = nn.ParameterList(tensors(10_000))  # another model whose tensors are held frozen
    parts = pw.Parts(nn.ModuleDict({"other": other}))
    optimizers = {}
    for n in SIZES:
        params = tensors(n)
        for p in params:
            p.grad = torch.ones(1)
        optimizers[n] = torch.optim.SGD(params, lr=1e-3, foreach=False)

    def run(n: int, held: int, hook: bool) -> float:
        if held:
            parts.freeze("other")
        if len(_freezing._STEP_HOOK) != 1:
            raise RuntimeError("partwise's step pre-hook is not registered once: the variants would not compare")
        if not hook:
            _freezing._STEP_HOOK.pop().remove()
        try:
            return step_seconds(optimizers[n], 2000 if n == 1 else 20)
        finally:
            if not hook:  # back for the next variant, as partwise registers it
                _freezing._STEP_HOOK.append(register_optimizer_step_pre_hook(_freezing._drop_held))
            if held:
                parts.unfreeze("other")

    parts.freeze("other")  # registers the hook once
    parts.unfreeze("other")
    variants = [(n, held, hook) for n in SIZES for held in (0, 10_000) for hook in (False, True)
                if hook or held == 0]
    seconds: dict[tuple[int, int, bool], list[float]] = {v: [] for v in variants}
    for r in range(rounds):
        for v in variants[r % len(variants):] + variants[:r % len(variants)]:
            seconds[v].append(run(*v))
    for n in SIZES:
        base = statistics.median(seconds[(n, 0, False)])
        print(f"optimizer of {n:>6} tensors, no partwise hook     : {base * 1e6:9.1f} us/step")
        for held in (0, 10_000):
            s = statistics.median(seconds[(n, held, True)])
            print(f"optimizer of {n:>6} tensors, {held:>6} held elsewhere: {s * 1e6:9.1f} us/step  "
                  f"({s / base:.2f}x the step without the hook)")


if __name__ == "__main__":
    main()
