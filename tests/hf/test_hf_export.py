"""partwise.hf.export: a from_pretrained directory that reloads with equal logits."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("transformers")
# EncoderDecoderModel warns on its own labels= loss; these tests use it on purpose
pytestmark = pytest.mark.filterwarnings("ignore:Version v4.12.0:FutureWarning")

import hf_models as H  # noqa: E402
import torch  # noqa: E402

import partwise as pw  # noqa: E402
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


def _tied_with(model, name):
    """The names that reach the same tensor as ``name``."""
    target = model.get_parameter(name)
    return {n for n, p in model.named_parameters(remove_duplicate=False) if p is target} - {name}


@pytest.mark.parametrize("name,untie,copy", [("bart", ["head"], "lm_head.weight"),
                                             ("marian", True, "model.encoder.embed_tokens.weight")])
@pytest.mark.parametrize("check", [True, False])
def test_untied_copies_with_equal_values_reload_untied(tmp_path, name, untie, copy, check):
    model = H.build(name)
    ph.parts(model, untie=untie)  # not trained: the copy still equals the tensor it was copied from
    assert not _tied_with(model, copy)
    with pytest.warns(UserWarning, match="separate equal copies"):
        out = ph.export(model, tmp_path / "m", check=check)  # decided from the model, not by the reload
    again = type(model).from_pretrained(out)
    assert not _tied_with(again, copy)  # before: from_pretrained tied the equal copy again
    assert torch.equal(again.get_parameter(copy), model.get_parameter(copy))
    with torch.no_grad():
        x, y = H.encoder_inputs(name), H.labels()
        assert torch.equal(model.eval()(**x, labels=y).logits, again.eval()(**x, labels=y).logits)


def test_t5_untied_copy_with_equal_values_is_refused_and_nothing_is_written(tmp_path):
    model = H.build("t5")
    ph.parts(model, untie=["encoder"])
    for check in (True, False):
        with pytest.raises(pw.PartError, match="would tie .*encoder.embed_tokens.weight.* train the untied part"):
            ph.export(model, tmp_path / "m", check=check)
    assert list(tmp_path.iterdir()) == []  # neither the directory nor a temporary one is left
