"""A partwise plan in a hand-written accelerate loop (``tests/hf/scripts/accelerate_loop.py``), with the
real accelerate: frozen encoder bit-identical, the DDP wrapper rebuilt at the unfreeze, ranks equal, and
``save_state``/``load_state`` resume bit-identical, in one process and in two (gloo)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

pytest.importorskip("accelerate")

import torch  # noqa: E402

import partwise as pw  # noqa: E402
import partwise.hf as ph  # noqa: E402
from processes import clean_env, launch, run_bounded  # noqa: E402

SCRIPT = Path(__file__).parent / "scripts" / "accelerate_loop.py"


def run(out: Path, *args: str, ranks: int = 1) -> subprocess.CompletedProcess:
    return run_bounded([*launch(ranks), str(SCRIPT), str(out), *args], timeout=300, env=clean_env(HF_HUB_OFFLINE="1"))


def load(out: Path, rank: int = 0) -> dict:
    return torch.load(out / f"rank{rank}.pt")


def same(a: dict, b: dict) -> list[str]:
    return [k for k in a if not torch.equal(a[k], b[k])]


def check_plan_followed(rec: dict) -> None:
    assert not same(rec["encoder_start"], rec["encoder_frozen_end"]), "frozen encoder moved"
    assert same(rec["encoder_frozen_end"], rec["encoder_final"]), "the encoder never trained"
    assert rec["lrs"] == {"encoder": pytest.approx(1e-3), "decoder": pytest.approx(1e-2)}


@pytest.mark.slow
@pytest.mark.parametrize("model", ["bart", "t5", "whisper"])
def test_one_process_resume_from_save_state_is_bit_identical(tmp_path, model):
    full = run(tmp_path / "full", "--save-at", "6", "--model", model)
    assert full.returncode == 0, full.stderr[-3000:]
    resumed = run(tmp_path / "resumed", "--resume", str(tmp_path / "full" / "step-6"), "--model", model)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = load(tmp_path / "full"), load(tmp_path / "resumed")
    check_plan_followed(a)
    assert a["wrapped"] == [["decoder"]]  # one process: no DDP wrapper to rebuild
    assert not same(a["final"], b["final"]), "resume ended elsewhere than the uninterrupted run"
    assert b["losses"] == a["losses"][6:]


@pytest.mark.slow
def test_two_processes_rebuild_ddp_at_the_unfreeze_agree_and_resume_exactly(tmp_path):
    full = run(tmp_path / "full", "--save-at", "6", ranks=2)
    assert full.returncode == 0, full.stderr[-3000:]
    resumed = run(tmp_path / "resumed", "--resume", str(tmp_path / "full" / "step-6"), ranks=2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    r0, r1 = load(tmp_path / "full", 0), load(tmp_path / "full", 1)
    check_plan_followed(r0)
    assert r0["wrapped"] == [["decoder"], ["encoder", "decoder"]]  # a new DDP wrapper for the new trainable set
    assert not same(r0["final"], r1["final"]), "ranks differ: a part's gradients were not averaged"
    assert r0["losses"] != r1["losses"]  # each rank trained on its own shard of the data
    for rank in (0, 1):
        assert not same(load(tmp_path / "full", rank)["final"], load(tmp_path / "resumed", rank)["final"])


def test_load_state_of_a_folder_without_the_plan_state_is_refused(tmp_path):
    full = run(tmp_path / "full", "--save-at", "2", "--stop-at", "2")
    assert full.returncode == 0, full.stderr[-3000:]
    (tmp_path / "full" / "step-2" / "partwise_plan.json").unlink()
    resumed = run(tmp_path / "resumed", "--resume", str(tmp_path / "full" / "step-2"))
    assert resumed.returncode != 0
    assert "load_state: " in resumed.stderr and "has no partwise_plan.json" in resumed.stderr


def test_a_driver_without_its_optimizer_is_refused_before_prepare():
    import transformers as tf

    model = tf.BartForConditionalGeneration(tf.BartConfig(
        vocab_size=40, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=64))
    driver = pw.PlanDriver(ph.parts(model), pw.Plan([pw.Phase("d", steps=2, train={"decoder": 1e-3})]))
    with pytest.raises(pw.ConfigError, match=r"driver.build_optimizer\(\) before accelerator.prepare"):
        ph.AcceleratePlan(None, driver)
