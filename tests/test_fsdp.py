"""FSDP2 with parts: two processes with gloo on CPU (torchrun), and the unit planning in one process."""

from __future__ import annotations

import glob
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import partwise as pw
from processes import free_port, run_bounded

SCRIPT = Path(__file__).parent / "scripts" / "fsdp_train.py"


def run(args: list[str], ranks: int = 2) -> None:
    launcher = ["-m", "torch.distributed.run", "--nproc_per_node", str(ranks), "--master_addr", "127.0.0.1",
                "--master_port", str(free_port())] if ranks > 1 else []
    proc = run_bounded([sys.executable, *launcher, str(SCRIPT), *args], timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def report(out: Path, name: str, mode: str, world: int, rank: int) -> dict:
    return json.loads((out / f"{name}-{mode}-world{world}-rank{rank}.json").read_text())


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """The whole weights of a run's last checkpoint, read from its per-part safetensors."""
    last = sorted(glob.glob(str(run_dir / "checkpoints" / "step-*")))[-1]
    return {k: v for f in glob.glob(f"{last}/part-*.safetensors") for k, v in load_file(f).items()}


def without_clock(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fsdp")
    run([str(out), "full", "run"])
    run([str(out), "full", "single"], ranks=1)
    run([str(out), "stop", "resumed"])
    shutil.copytree(out / "resumed", out / "one")  # the same stopped run, to resume in one process
    run([str(out), "resume", "resumed"])
    run([str(out), "resume", "one"], ranks=1)
    run([str(out), "stop", "two"], ranks=1)  # a one-process run, resumed sharded on 2 ranks
    run([str(out), "resume", "two"])
    return out


@pytest.mark.slow
def test_frozen_encoder_stays_bit_identical_on_every_rank_and_trains_once_unfrozen(runs):
    r0, r1 = (report(runs, "run", "full", 2, r) for r in (0, 1))
    assert r0["sharded"] and r1["sharded"]
    assert r0["encoder_at"] == r1["encoder_at"]  # the same whole weights on every rank at each phase start
    assert r0["encoder_at"]["decoder"] == r0["encoder_at"]["all"]  # frozen through phase 1: bit-identical
    assert r0["losses"] == r1["losses"] and without_clock(r0["history"]) == without_clock(r1["history"])
    # the frozen encoder's outputs were cached (built by both ranks together), and dropped once it trains
    assert r0["cached"] == r1["cached"] == {"decoder": True, "all": False}
    # every parameter is sharded: each rank holds half the rows of the embedding
    assert r0["local_shapes"]["decoder.out.weight"][0] < weights(runs / "run")["decoder.out.weight"].shape[0]
    start = torch.tensor(r0["encoder_at"]["all"]["rnn.weight_ih_l0"])
    end = weights(runs / "run")["encoder.rnn.weight_ih_l0"].flatten()
    assert not torch.equal(start, end), "the encoder unfrozen in phase 2 must have trained"
    assert len(r0["history"]) == 4 and all("dev_loss" in h for h in r0["history"])  # rank 0 evaluated, all took it


@pytest.mark.slow
def test_two_sharded_ranks_train_as_one_process(runs):
    sharded, single = weights(runs / "run"), weights(runs / "single")
    assert sharded.keys() == single.keys()
    for k in single:
        torch.testing.assert_close(sharded[k], single[k], rtol=1e-4, atol=1e-5)
    one = report(runs, "single", "full", 1, 0)
    assert not one["sharded"]
    torch.testing.assert_close(torch.tensor(report(runs, "run", "full", 2, 0)["losses"]),
                               torch.tensor(one["losses"]), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_resume_after_a_stop_inside_the_unfrozen_phase_is_bit_identical(runs):
    stop, resume = (report(runs, "resumed", m, 2, 0) for m in ("stop", "resume"))
    assert stop["losses"] + resume["losses"] == report(runs, "run", "full", 2, 0)["losses"]
    full, resumed = weights(runs / "run"), weights(runs / "resumed")
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    last = sorted(glob.glob(str(runs / "resumed" / "checkpoints" / "step-*")))[-1]
    assert sorted(p.name for p in Path(last, "shards").iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]


@pytest.mark.slow
def test_a_sharded_checkpoint_resumes_in_one_process(runs):
    """The optimizer state comes back whole from the shards (torch.distributed.checkpoint without a
    process group), so one process continues the 2-rank run as the 2 ranks did."""
    one, full = weights(runs / "one"), weights(runs / "run")
    for k in full:
        torch.testing.assert_close(one[k], full[k], rtol=1e-4, atol=1e-5)
    resumed = report(runs, "one", "resume", 1, 0)
    torch.testing.assert_close(torch.tensor(resumed["losses"]),
                               torch.tensor(report(runs, "run", "full", 2, 0)["losses"][15:]), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_a_one_process_checkpoint_resumes_sharded(runs):
    """Whole weights and optimizer state from a one-process checkpoint, each rank keeping its shard."""
    two, full = weights(runs / "two"), weights(runs / "run")
    for k in full:
        torch.testing.assert_close(two[k], full[k], rtol=1e-4, atol=1e-5)
    assert report(runs, "two", "resume", 2, 0)["sharded"]


@pytest.mark.slow
def test_a_sharded_run_is_read_by_the_one_process_tools(runs):
    """load_part (and so eval, predict and export) read the whole per-part weights rank 0 wrote."""
    sys.path.insert(0, str(SCRIPT.parent))
    import fsdp_train

    model, _ = fsdp_train.build()
    pw.load_part(model, "decoder", pw.resolve_checkpoint(runs / "run"))
    assert torch.equal(model.decoder.out.weight, weights(runs / "run")["decoder.out.weight"])
    assert not torch.equal(model.encoder.bridge.weight, weights(runs / "run")["encoder.bridge.weight"])


@pytest.mark.slow
def test_a_tied_tensor_split_across_units_is_refused_before_training(tmp_path):
    run([str(tmp_path), "tied"])
    for rank in (0, 1):
        message = (tmp_path / f"tied-rank{rank}.txt").read_text()
        assert "tied tensor 'embed.weight' is held by embed, head" in message and "partwise.untie" in message


@pytest.mark.slow
def test_a_frozen_shard_changed_on_one_rank_stops_every_rank(tmp_path):
    """Each rank fingerprints its own shards; the verdict is gathered, so no rank trains on alone."""
    run([str(tmp_path), "guard"])
    for rank in (0, 1):
        message = (tmp_path / f"guard-rank{rank}.txt").read_text()
        assert message.startswith("FrozenPartChanged at step 12") and "encoder.embed.weight" in message


@pytest.mark.slow
def test_lora_adapters_train_first_then_the_base_under_two_sharded_ranks(tmp_path):
    pytest.importorskip("peft")
    run([str(tmp_path), "lora"])
    run([str(tmp_path), "lora"], ranks=1)
    r0, r1, one = (json.loads((tmp_path / f"lora-world{w}-rank{r}.json").read_text())
                   for w, r in ((2, 0), (2, 1), (1, 0)))
    assert r0["final"] == r1["final"] and r0["parts"] == ["encoder", "decoder", "decoder.lora"]
    start, base_phase, end = r0["at"]["adapters"], r0["at"]["base too"], r0["final"]
    base = [k for k in start if k.startswith("decoder.") and "lora_" not in k]
    adapter = [k for k in start if "lora_B" in k]
    assert base and all(start[k] == base_phase[k] for k in base)  # frozen while the adapters train
    assert adapter and all(start[k] != base_phase[k] for k in adapter)  # the adapters trained
    assert all(base_phase[k] != end[k] for k in base if "weight" in k)  # then the base, at its lower rate
    for k in end:
        torch.testing.assert_close(torch.tensor(end[k]), torch.tensor(one["final"][k]), rtol=1e-4, atol=1e-5)


def tied_model() -> nn.Module:
    model = nn.Module()
    model.embed = nn.Embedding(10, 8)
    model.encoder = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))
    model.head = nn.Linear(8, 10, bias=False)
    model.head.weight = model.embed.weight
    return model


def test_units_follow_parts_and_keep_a_tied_tensor_in_one_unit():
    model = tied_model()
    parts = pw.Parts(model)
    assert pw.plan_units(model, parts) == [["embed", "head"], ["encoder"]]
    assert pw.plan_units(model, parts, units=["encoder.*"]) == [["encoder.0"], ["encoder.1"], ["embed", "head"],
                                                                 ["encoder"]]
    with pytest.raises(pw.ConfigError, match="tied tensor 'embed.weight' is held by embed, head"):
        pw.plan_units(model, parts, units=["head"])
    with pytest.raises(pw.ConfigError, match="pattern 'decoder.*' matches no module"):
        pw.plan_units(model, parts, units=["decoder.*"])


def test_units_of_a_t5_keep_its_shared_embedding_and_lm_head_together():
    transformers = pytest.importorskip("transformers")
    config = transformers.T5Config(vocab_size=32, d_model=8, d_kv=4, d_ff=16, num_layers=2, num_heads=2,
                                   decoder_start_token_id=0)
    model = transformers.T5ForConditionalGeneration(config)
    parts = pw.Parts(model, {"encoder": "encoder", "decoder": ["decoder", "lm_head"], "shared": "shared"})
    units = pw.plan_units(model, parts, units=["encoder.block.*", "decoder.block.*"])
    tied = [u for u in units if "lm_head" in u]
    assert len(tied) == 1 and {"shared", "encoder.embed_tokens", "decoder.embed_tokens"} <= set(tied[0])
    # 'encoder' holds the shared embedding too: the encoder part's unit is what it owns alone, with the
    # ModuleList of blocks (which never runs a forward of its own) replaced by its blocks
    mine = ["encoder.final_layer_norm"]  # its blocks are units of their own already
    assert units[:2] == [["encoder.block.0"], ["encoder.block.1"]] and mine in units
    assert units.index(tied[0]) < units.index(mine)


def test_fsdp_options_are_checked_with_the_others():
    model = tied_model()
    plan = pw.Plan([pw.Phase("all", steps=1, train={"embed": 1e-3, "encoder": 1e-3, "head": 1e-3})])
    with pytest.raises(pw.ConfigError) as e:
        pw.Trainer(model, pw.Parts(model), plan, lambda m, b: m.head(b).sum(), distributed="zero3",
                   fsdp_units="encoder", device="cpu")
    assert "distributed: 'zero3' must be 'ddp' or 'fsdp2'" in str(e.value)
    assert "fsdp_units: 'encoder' must be a list of module path patterns" in str(e.value)
    with pytest.raises(pw.ConfigError, match="average_last: not available with distributed='fsdp2'"):
        pw.Trainer(model, pw.Parts(model), plan, lambda m, b: m.head(b).sum(), distributed="fsdp2",
                   average_last=2, run_dir="unused", best_metric=("loss", "min"), device="cpu")


def test_one_process_ignores_fsdp2():
    """Without torchrun there is nothing to shard: the run is a plain one-process run."""
    model = nn.Module()
    model.encoder, model.decoder = nn.Linear(3, 4), nn.Linear(4, 2)
    plan = pw.Plan([pw.Phase("all", steps=2, train={"encoder": 1e-2, "decoder": 1e-2})])
    trainer = pw.Trainer(model, pw.Parts(model), plan, lambda m, b: m.decoder(m.encoder(b)).pow(2).mean(),
                         distributed="fsdp2", batch_size=4, device="cpu")
    trainer.fit([torch.randn(3) for _ in range(8)])
    assert not trainer.sharded and trainer.step == 2 and trainer.parts.model is model


T5 = Path(__file__).parent / "scripts" / "fsdp_t5.py"


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_tiny_t5_trains_its_decoder_on_a_frozen_encoder_then_unfreezes_it(tmp_path, precision):
    pytest.importorskip("transformers")
    for ranks in (2, 1):
        launcher = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                    "--master_port", str(free_port())] if ranks > 1 else []
        proc = run_bounded([sys.executable, *launcher, str(T5), str(tmp_path), precision], timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1, one = (json.loads((tmp_path / f"t5-world{w}-rank{r}.json").read_text())
                   for w, r in ((2, 0), (2, 1), (1, 0)))
    assert r0["sharded"] and not one["sharded"]
    assert r0["losses"] == r1["losses"] and r0["final"] == r1["final"]  # the ranks agree on every whole weight
    start, unfrozen, end = r0["at"]["decoder"], r0["at"]["all"], r0["final"]
    encoder = [k for k in start if k.startswith("encoder.")]
    assert encoder and all(start[k] == unfrozen[k] for k in encoder)  # frozen in phase 1: bit-identical
    assert start["shared.weight"] == end["shared.weight"]  # the tied embedding never trains
    assert all(start[k] != end[k] for k in end if k.startswith(("decoder.block", "encoder.block")))
    tol = {"fp32": {"rtol": 1e-4, "atol": 1e-5}, "bf16": {"rtol": 2e-2, "atol": 1e-2}}[precision]  # bf16: 8 bits
    for k in end:
        torch.testing.assert_close(torch.tensor(end[k]), torch.tensor(one["final"][k]), **tol)
