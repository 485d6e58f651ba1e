"""Two processes with gloo on CPU: ranks stay identical across a transition that unfreezes a part,
and match one process with the same global batch."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import partwise as pw
from partwise._run import _checkpoint
from processes import free_port, run_bounded

SCRIPT = Path(__file__).parent / "scripts" / "ddp_train.py"


def run(args: list[str]) -> None:
    proc = run_bounded([sys.executable, *args], timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
def test_two_ranks_identical_and_equal_to_one_process(tmp_path):
    port = str(free_port())
    run(["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", port,
         str(SCRIPT), str(tmp_path)])
    run([str(SCRIPT), str(tmp_path)])
    r0, r1 = (torch.load(tmp_path / f"world2-rank{r}.pt") for r in (0, 1))
    single = torch.load(tmp_path / "world1-rank0.pt")
    for k in r0:
        assert torch.equal(r0[k], r1[k]), f"ranks differ in {k}"
        torch.testing.assert_close(r0[k], single[k], rtol=1e-4, atol=1e-5)
    torch.manual_seed(0)
    initial_body = nn.Sequential(nn.Linear(6, 16), nn.Tanh())  # same init as the script's
    assert not torch.equal(initial_body[0].weight, r0["body.0.weight"]), (
        "the body unfrozen in phase 2 must have trained")


VALIDATE = Path(__file__).parent / "scripts" / "ddp_validate.py"


@pytest.mark.slow
def test_two_ranks_agree_on_evaluation_best_checkpoint_and_early_stopping(tmp_path):
    port = str(free_port())
    run(["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", port,
         str(VALIDATE), str(tmp_path)])
    r0, r1 = (json.loads((tmp_path / f"decisions-rank{r}.json").read_text()) for r in (0, 1))
    assert r0 == r1  # the same metrics, best value, stopping step and weights on both ranks
    assert r0["skipped"] == 1  # rank 1's infinite loss made every rank skip that step
    assert len(r0["history"]) == 3 and r0["step"] == 18  # early stopping fired (the plan has 6 epochs of 6 steps)
    best_epoch = min(r0["history"], key=lambda h: h["dev_loss"])
    assert r0["best"] == best_epoch["dev_loss"]
    best = pw.resolve_checkpoint(tmp_path / "run", "best")
    assert _checkpoint.read_meta(best)["step"] == best_epoch["step"]


CACHE = Path(__file__).parent / "scripts" / "ddp_cache.py"


@pytest.mark.slow
def test_two_ranks_with_the_encoder_cache_train_as_without_it(tmp_path):
    for cache in ("off", "on"):
        port = str(free_port())
        run(["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
             "--master_port", port, str(CACHE), str(tmp_path), cache])
    off, on = ({r: torch.load(tmp_path / f"{c}-rank{r}.pt") for r in (0, 1)} for c in ("off", "on"))
    assert on[0]["cached"] and on[1]["cached"] and not off[0]["cached"]
    assert on[0]["cache_rows"] == on[1]["cache_rows"] == 96  # each rank encoded half; the halves were gathered
    for k in on[0]["state"]:
        assert torch.equal(on[0]["state"][k], on[1]["state"][k]), f"ranks differ in {k}"
        torch.testing.assert_close(on[0]["state"][k], off[0]["state"][k], rtol=1e-4, atol=1e-5)
    assert on[0]["losses"] == on[1]["losses"] and len(on[0]["losses"]) == 18
    torch.testing.assert_close(on[0]["losses"], off[0]["losses"], rtol=1e-5, atol=1e-6)
    assert on[0]["mapped_equal"] and on[1]["mapped_equal"]
    assert on[0]["mapped_files"] == on[1]["mapped_files"] == ["final.npy", "states.npy"]
