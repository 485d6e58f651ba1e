"""partwise.hf.export: a from_pretrained directory that reloads with equal logits."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("transformers")
# EncoderDecoderModel warns on its own labels= loss; these tests use it on purpose
pytestmark = pytest.mark.filterwarnings("ignore:Version v4.12.0:FutureWarning")

import hf_models as H  # noqa: E402
import torch  # noqa: E402

import partwise.hf as ph  # noqa: E402


@pytest.mark.parametrize("name,untie", [("t5", True), ("bart", ["head"]), ("whisper", True), ("bert2bert", False),
                                        ("marian", False)])
def test_export_reloads_with_equal_logits(tmp_path, name, untie):
    from transformers import AutoModelForSeq2SeqLM

    model = H.build(name)
    parts = ph.parts(model, untie=untie)
    opt = torch.optim.SGD([p for part in parts for p in part.parameters() if p.requires_grad], lr=0.5)
    model(**H.encoder_inputs(name), labels=H.labels()).loss.backward()
    opt.step()  # trained: untied copies now differ
    out = ph.export(model.eval(), tmp_path / "m", extra={"note": "x"})
    assert json.loads((out / "partwise.json").read_text()) == {"note": "x"}
    loader = type(model) if name in ("whisper", "bert2bert") else AutoModelForSeq2SeqLM
    again = loader.from_pretrained(out).eval()
    x, y = H.encoder_inputs(name), H.labels()
    with torch.no_grad():
        assert torch.equal(model(**x, labels=y).logits, again(**x, labels=y).logits)
    assert ph.parts(again).names == parts.names


def test_export_refuses_a_non_empty_directory_and_non_hf_models(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "f").write_text("keep")
    with pytest.raises(FileExistsError, match="not an empty directory"):
        ph.export(H.build("t5"), tmp_path / "x")
    with pytest.raises(TypeError, match="Hugging Face model"):
        ph.export(torch.nn.Linear(2, 2), tmp_path / "y")
