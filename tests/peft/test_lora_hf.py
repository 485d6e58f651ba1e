"""LoRA on the decoder of tiny Hugging Face T5, BART and Whisper models: adapter-only training with
the encoder frozen and cached, the guard passing; the adapter folder loads in PEFT itself; merge."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("peft")
pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "hf"))

import hf_models as H  # noqa: E402
import torch  # noqa: E402

import partwise as pw  # noqa: E402
import partwise.hf as ph  # noqa: E402
from partwise.peft import add_lora  # noqa: E402

TARGETS = {"t5": ["q", "v"], "bart": ["q_proj", "v_proj"], "whisper": ["q_proj", "v_proj"]}
PLAN = pw.Plan([pw.Phase("decoder adapters", epochs=2, train={"decoder.lora": 1e-2})])


class Cached:
    def __init__(self):
        self.used = None

    def on_phase_start(self, trainer, span):
        self.used = trainer.cache is not None


def logits(model, rows):
    batch = ph.Seq2SeqLMCollator(H.PAD)([rows[i] for i in range(4)])
    batch.pop("index", None)
    model.eval()
    with torch.no_grad():
        return model(**batch).logits


@pytest.mark.parametrize("name", ["t5", "bart", "whisper"])
def test_decoder_lora_trains_on_the_cached_frozen_encoder_and_loads_in_peft(name, tmp_path):
    from peft import PeftModel

    model = H.build(name)
    lora = add_lora(model, "decoder", spec=ph.spec(model), r=4, targets=TARGETS[name])
    base = {n: p.detach().clone() for n, p in model.named_parameters() if ".lora_" not in n}
    cached = Cached()
    rows = ph.Seq2SeqLMDataset(H.reverse_rows(name, 24))
    trainer = pw.Trainer(model, pw.Parts(model, lora.spec), PLAN, ph.Seq2SeqLMTask(), batch_size=8,
                         collate_fn=ph.Seq2SeqLMCollator(H.PAD), guard=True, callbacks=[cached])
    trainer.fit(rows)
    assert cached.used  # encoder and embeddings frozen: their outputs were computed once
    assert all(torch.equal(p, base[n]) for n, p in model.named_parameters() if n in base)
    out = lora.save(model, tmp_path / "adapter")
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert (out / "adapter_model.safetensors").stat().st_size < 64 * 1024  # adapter weights only
    again = PeftModel.from_pretrained(H.build(name), str(out))  # PEFT's own loader, on a fresh base
    torch.testing.assert_close(logits(again, rows), logits(model, rows))
    with pytest.raises(FileExistsError):
        lora.save(model, out)


def test_whisper_lora_on_every_decoder_linear_is_refused_at_the_tied_output_layer():
    model = H.build("whisper")
    with pytest.raises(pw.ConfigError, match=r"'proj_out' \(part 'decoder'\) holds a tied tensor"):
        add_lora(model, "decoder", spec=ph.spec(model))


def test_merged_t5_exports_as_a_plain_from_pretrained_model(tmp_path):
    from transformers import AutoModelForSeq2SeqLM

    model = H.build("t5")
    lora = add_lora(model, "decoder", spec=ph.spec(model), r=4, targets=TARGETS["t5"])
    rows = ph.Seq2SeqLMDataset(H.reverse_rows("t5", 24))
    pw.Trainer(model, pw.Parts(model, lora.spec), PLAN, ph.Seq2SeqLMTask(), batch_size=8,
               collate_fn=ph.Seq2SeqLMCollator(H.PAD)).fit(rows)
    before = logits(model, rows)
    report = lora.merge(model)
    assert "merged 4 LoRA layer(s) of decoder.lora" in str(report)
    ph.export(model, tmp_path / "merged")
    torch.testing.assert_close(logits(AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "merged"), rows), before,
                               rtol=1e-4, atol=1e-5)
