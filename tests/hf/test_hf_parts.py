"""partwise.hf.parts and pw.untie on tiny random-initialised models of every supported family."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("transformers")
# EncoderDecoderModel warns on its own labels= loss; these tests use it on purpose
pytestmark = pytest.mark.filterwarnings("ignore:Version v4.12.0:FutureWarning")

import hf_models as H  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import partwise as pw  # noqa: E402
import partwise.hf as ph  # noqa: E402

# which parts each family has without untying: one token embedding shared by encoder, decoder and
# LM head (T5, BART, Marian, ...); Whisper's proj_out is the decoder's embed_tokens, so it is no part
# of its own; BERT2BERT's output layer is tied to the decoder's word embeddings.
EXPECTED = {
    **dict.fromkeys(["t5", "umt5", "bart", "mbart", "marian", "pegasus", "m2m100"],
                    ["embeddings", "encoder", "decoder"]),
    "whisper": ["encoder", "decoder"],
    "bert2bert": ["encoder", "decoder"],
    "vit2bert": ["encoder", "decoder"],
}


def _encoder_step(name: str, model: nn.Module, opt: torch.optim.Optimizer) -> None:
    model.train()
    out = model(**H.encoder_inputs(name), labels=H.labels())
    opt.zero_grad()
    out.loss.backward()
    opt.step()


@pytest.mark.parametrize("name", list(H.ALL))
def test_same_part_names_for_every_family(name):
    model = H.build(name)
    parts = ph.parts(model)
    assert parts.names == EXPECTED[name]
    assert all(t.parts == (t.owner,) for t in parts.shared())  # every tied tensor inside one part
    # every parameter of the encoder module is in part "encoder" unless it is the shared embedding
    enc = dict(model.get_encoder().named_parameters())
    owner = parts.part_of()
    assert {owner[id(p)] for p in enc.values()} <= {"encoder", "embeddings"}


@pytest.mark.parametrize("name", list(H.ALL))
def test_untie_true_gives_encoder_decoder_head(name):
    model = H.build(name)
    parts = ph.parts(model, untie=True)
    assert parts.names == ["encoder", "decoder", "head"]
    assert not parts.shared() or all(t.parts == (t.owner,) for t in parts.shared())
    head = model.get_output_embeddings().weight
    assert all(head is not p for n, p in model.named_parameters() if not n.startswith(ph.structure(model).head))


@pytest.mark.parametrize("name", ["t5", "bart", "marian", "whisper", "bert2bert"])
@pytest.mark.parametrize("untie", [False, True])
def test_frozen_encoder_bit_identical_while_decoder_learns(name, untie):
    model = H.build(name)
    parts = ph.parts(model, untie=untie)
    frozen = ["encoder"] + (["embeddings"] if "embeddings" in parts else [])
    parts.freeze(*frozen)
    opt = pw.build_optimizer(parts, default={"name": "adamw", "lr": 1e-2, "weight_decay": 0.1})
    before = {n: p.detach().clone() for n, p in parts["decoder"].named_parameters()}
    with parts.guard():
        for _ in range(2):
            _encoder_step(name, model, opt)
    model.train()  # the frozen encoder's dropout stays off: two passes give the same output
    enc, x = model.get_encoder(), H.encoder_inputs(name)
    assert torch.equal(enc(**x).last_hidden_state, enc(**x).last_hidden_state)
    moved = [n for n, p in parts["decoder"].named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert moved


def test_freezing_encoder_alone_needs_untying_only_when_shared():
    model = H.build("t5")
    parts = ph.parts(model)
    parts.freeze("encoder")  # the shared embedding is its own part: freezing the encoder is allowed
    assert model.shared.weight.requires_grad
    assert not model.encoder.block[0].layer[0].SelfAttention.q.weight.requires_grad


@pytest.mark.parametrize("name", ["marian", "pegasus", "whisper"])
def test_fixed_position_tables_stay_fixed(name):
    model = H.build(name)
    fixed = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert fixed  # sinusoidal position tables HF creates with requires_grad=False
    parts = ph.parts(model)
    parts.freeze(*parts.names)
    parts.unfreeze(*parts.names)
    opt = pw.build_optimizer(parts, default={"name": "adamw", "lr": 1e-2})
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    for n in fixed:
        p = model.get_parameter(n)
        assert not p.requires_grad and id(p) not in in_opt


@pytest.mark.parametrize("name", ["t5", "bart", "whisper", "bert2bert"])
def test_untied_model_reloads_untied_with_equal_logits(name, tmp_path):
    model = H.build(name)
    report = ph.untie_parts(model, True)
    assert report.untied
    with torch.no_grad():  # make the copies differ, as training would
        for n in report.names:
            model.get_parameter(n).mul_(1.5)
    model.save_pretrained(tmp_path)
    again = type(model).from_pretrained(tmp_path).eval()
    x, y = H.encoder_inputs(name), H.labels()
    with torch.no_grad():
        assert torch.equal(model.eval()(**x, labels=y).logits, again(**x, labels=y).logits)
    assert ph.parts(again).names == ["encoder", "decoder", "head"]


def test_untie_core_on_plain_module():
    model = nn.Module()
    model.embed, model.head = nn.Embedding(5, 3), nn.Linear(3, 5, bias=False)
    model.head.weight = model.embed.weight
    report = pw.untie(model, "head")
    assert report.names == ["head.weight"] and report.untied[0].kept == ("embed.weight",)
    assert torch.equal(model.head.weight, model.embed.weight) and model.head.weight is not model.embed.weight
    assert not pw.untie(model, "head")  # nothing left to untie
    with pytest.raises(pw.PartError, match="no module at path 'haed'.*'head'"):
        pw.untie(model, "haed")
    with pytest.raises(pw.PartError, match="at least one module path"):
        pw.untie(model)


def test_untie_updates_hf_tie_flags_only_when_nothing_stays_tied():
    whisper = H.build("whisper")
    report = pw.untie(whisper, "proj_out")
    assert whisper.config.tie_word_embeddings is False
    assert any("tie_word_embeddings" in c for c in report.config_changes)
    bart = H.build("bart")
    pw.untie(bart, "lm_head")  # encoder and decoder still share model.shared
    assert bart.config.tie_word_embeddings is True
    assert "lm_head.weight" not in bart.get_expanded_tied_weights_keys(all_submodels=True)
    bart.tie_weights()  # HF's own re-tying keeps the untied head untied
    assert bart.lm_head.weight is not bart.model.shared.weight
    assert bart.model.encoder.embed_tokens.weight is bart.model.shared.weight


def test_untie_rejects_unknown_parts():
    with pytest.raises(pw.PartError, match="choose from"):
        ph.parts(H.build("t5"), untie=["embedding"])


def test_core_never_imports_transformers():
    code = "import partwise, partwise.cli, sys; assert 'transformers' not in sys.modules, 'core imported transformers'"
    subprocess.run([sys.executable, "-c", code], check=True)
