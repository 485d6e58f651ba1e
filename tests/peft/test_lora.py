"""LoRA adapters as parts (partwise.peft) on partwise's reference GRU and Transformer: the base frozen
by the plan (not fixed), bit-identical under the guard while the adapter learns; adapter optimizer
state only; exact resume; merge equal to the unmerged model; a later phase trains the base."""

from __future__ import annotations

import pytest

pytest.importorskip("peft")

import torch  # noqa: E402
from torch import nn  # noqa: E402

import partwise as pw  # noqa: E402
from partwise.data import Seq2SeqDataset, Vocab, collate  # noqa: E402
from partwise.peft import adapter_modules, add_lora, lora_state_bytes  # noqa: E402
from partwise.seq2seq import Seq2SeqTask, gru_seq2seq, transformer_seq2seq  # noqa: E402

WORDS = ["abc", "bca", "cab", "abcd", "dcba", "bad", "dab", "cad", "acdb", "bdca", "cbad", "dacb"] * 4


def data():
    pairs = [(list(w), list(reversed(w))) for w in WORDS]
    vocab = Vocab.build([s for s, _ in pairs])
    return Seq2SeqDataset(pairs, vocab, vocab), vocab


def model_of(kind: str, vocab: Vocab) -> nn.Module:
    torch.manual_seed(0)
    if kind == "gru":
        return gru_seq2seq(src_vocab=len(vocab), tgt_vocab=len(vocab), emb=8, hidden=16, attention="dot")
    return transformer_seq2seq(src_vocab=len(vocab), tgt_vocab=len(vocab), d_model=16, heads=2, enc_layers=1,
                               dec_layers=1, ff=32, dropout=0.0)


def trainer_for(model, spec, plan, **kw):
    return pw.Trainer(model, pw.Parts(model, spec), plan, Seq2SeqTask(), batch_size=8, collate_fn=collate,
                      guard=True, **kw)


ADAPTERS_ONLY = pw.Plan([pw.Phase("adapters", epochs=2, train={"decoder.lora": 1e-2})])


@pytest.mark.parametrize("kind", ["gru", "transformer"])
def test_the_adapter_learns_while_the_frozen_base_stays_bit_identical(kind):
    train, vocab = data()
    model = model_of(kind, vocab)
    lora = add_lora(model, "decoder", r=2)
    assert lora.adapter_parts == ["decoder.lora"] and adapter_modules(model)
    base = {n: p.detach().clone() for n, p in model.named_parameters() if ".lora_" not in n}
    adapter = {n: p.detach().clone() for n, p in model.named_parameters() if ".lora_" in n}
    assert all(p.requires_grad for p in model.parameters())  # PEFT's requires_grad=False undone: frozen by plans
    trainer = trainer_for(model, lora.spec, ADAPTERS_ONLY)
    trainer.fit(train)  # the guard raises if a frozen tensor moved
    now = dict(model.named_parameters())
    assert all(torch.equal(now[n], v) for n, v in base.items())
    assert any(not torch.equal(now[n], v) for n, v in adapter.items() if ".lora_B." in n)
    held = pw.state_bytes(trainer.optimizer, trainer.parts)
    assert held["encoder"] == 0 and held["decoder"] == 0 and held["decoder.lora"] > 0


def test_a_later_phase_trains_the_base_at_its_own_learning_rate():
    train, vocab = data()
    model = model_of("gru", vocab)
    lora = add_lora(model, "decoder", r=2, split=True)  # LoRA+: A and B as parts of their own
    plan = pw.Plan([
        pw.Phase("adapters", epochs=1, train={"decoder.lora_A": 1e-3, "decoder.lora_B": 1.6e-2}),
        pw.Phase("decoder too", epochs=1, train={"decoder.lora_A": 1e-3, "decoder.lora_B": 1.6e-2, "decoder": 1e-4}),
    ])
    seen = {}

    class Watch:
        def on_phase_start(self, trainer, span):
            seen[span.phase.name] = {g["part"]: g["lr"] for g in trainer.optimizer.param_groups if g["params"]}

    before = {n: p.detach().clone() for n, p in model.decoder.named_parameters() if ".lora_" not in n}
    trainer_for(model, lora.spec, plan, callbacks=[Watch()]).fit(train)
    assert seen["adapters"] == {"decoder.lora_A": 1e-3, "decoder.lora_B": 1.6e-2}
    assert seen["decoder too"]["decoder"] == 1e-4
    moved = [n for n, p in model.decoder.named_parameters() if n in before and not torch.equal(p, before[n])]
    assert moved  # the base decoder, frozen in phase 1 (not fixed by PEFT), trained in phase 2


def test_resume_with_adapters_ends_bit_identical(tmp_path):
    train, vocab = data()
    plan = pw.Plan([pw.Phase("adapters", epochs=2, train={"decoder.lora": 1e-2}),
                    pw.Phase("all", epochs=1, train={"decoder.lora": 1e-2, "decoder": 1e-3, "encoder": 1e-4})])

    def run(resume=None, max_steps=None, run_dir=None):
        model = model_of("transformer", vocab)
        lora = add_lora(model, "decoder", r=2)
        trainer_for(model, lora.spec, plan, run_dir=run_dir, seed=3).fit(train, resume=resume, max_steps=max_steps)
        return model

    full = run()
    run(max_steps=9, run_dir=tmp_path)  # mid phase 2 of 3 epochs of 6 steps
    ckpt = pw.resolve_checkpoint(tmp_path)
    assert (ckpt / "part-decoder.lora.safetensors").stat().st_size < (ckpt / "part-decoder.safetensors").stat().st_size
    resumed = run(resume=tmp_path, run_dir=tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(full.state_dict().values(), resumed.state_dict().values(),
                                                 strict=True))


@pytest.mark.parametrize("kind", ["gru", "transformer"])
def test_merge_folds_the_adapters_into_the_base_weights(kind):
    train, vocab = data()
    model = model_of(kind, vocab)
    plain_names = list(model_of(kind, vocab).state_dict())
    lora = add_lora(model, "decoder", r=2)
    trainer_for(model, lora.spec, ADAPTERS_ONLY).fit(train)
    batch = collate([train[i] for i in range(8)])
    model.eval()
    with torch.no_grad():
        before = model(batch.src, batch.src_mask, batch.tgt_in)
    report = lora.merge(model)
    with torch.no_grad():
        after = model(batch.src, batch.src_mask, batch.tgt_in)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
    assert not adapter_modules(model) and list(model.state_dict()) == plain_names  # a plain model again
    assert report.parts == ("decoder.lora",) and pw.Parts(model, report.spec).names == ["encoder", "decoder"]


def test_bad_requests_are_refused_naming_the_part():
    _, vocab = data()
    model = model_of("gru", vocab)
    with pytest.raises(pw.ConfigError, match=r"'decodr' is not a part; the parts are \['encoder', 'decoder'\]"):
        add_lora(model, "decodr")
    with pytest.raises(pw.ConfigError, match="part 'decoder' has no nn.Linear module named \\['q'\\]"):
        add_lora(model, "decoder", targets=["q"])
    add_lora(model, "decoder")
    with pytest.raises(pw.ConfigError, match="has adapter layers already"):
        add_lora(model, "encoder")


def test_a_tied_output_layer_is_refused_not_silently_untied():
    model = nn.Module()
    model.embed = nn.Embedding(10, 4)
    model.decoder = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 10, bias=False))
    model.decoder[1].weight = model.embed.weight  # tied output layer
    with pytest.raises(pw.ConfigError, match=r"'decoder.1' \(part 'embed'\) holds a tied tensor \(.*\); a LoRA "
                                             "delta there would untie it silently"):
        add_lora(model, ["embed", "decoder"])
    lora = add_lora(model, "decoder", targets=["0"])  # the untied layer only
    assert lora.targets == {"decoder": ("decoder.0",)}
    assert lora_state_bytes(model) == (8 * 4 + 4 * 8) * 4  # r=8: A is 8x4, B 4x8, float32


def test_adapter_only_checkpoints_resume_exactly_and_refuse_a_model_without_the_base(tmp_path):
    """checkpoint_parts="trained": the checkpoints hold the adapter part only; resume needs the frozen
    base as it was (a digest in meta.json says so), and ends bit-identical."""
    train, vocab = data()

    def run(resume=None, max_steps=None, run_dir=None, seed=0):
        model = model_of("transformer", vocab)
        if seed:
            torch.manual_seed(seed)
            model.encoder.layers[0].ff.inner.reset_parameters()  # not the weights the run was trained from
        lora = add_lora(model, "decoder", r=2)
        trainer = trainer_for(model, lora.spec, ADAPTERS_ONLY, run_dir=run_dir, checkpoint_parts="trained")
        trainer.fit(train, resume=resume, max_steps=max_steps)
        return model

    full = run()
    run(max_steps=3, run_dir=tmp_path)
    ckpt = pw.resolve_checkpoint(tmp_path)
    assert sorted(p.name for p in ckpt.glob("*.safetensors")) == ["part-decoder.lora.safetensors"]
    with pytest.raises(pw.CheckpointError, match=r"does not hold part\(s\) \['encoder'\] .* load them first"):
        run(resume=tmp_path, run_dir=tmp_path, seed=7)
    resumed = run(resume=tmp_path, run_dir=tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(full.state_dict().values(), resumed.state_dict().values(),
                                                 strict=True))
