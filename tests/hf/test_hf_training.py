"""HF models under pw.Trainer: a decoder-first plan, then the encoder at 1/100 of the LR; exact resume;
the frozen-encoder cache fed through encoder_outputs=."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")

import hf_models as H  # noqa: E402
import torch  # noqa: E402

import partwise as pw  # noqa: E402
import partwise.hf as ph  # noqa: E402
from partwise._run import _checkpoint  # noqa: E402
from partwise._train._cache import EncoderCache  # noqa: E402

PLAN = pw.Plan([
    pw.Phase("decoder first", epochs=2, train={"decoder": 1e-2}),  # encoder and shared embedding frozen
    pw.Phase("all", epochs=1, train={"decoder": 1e-2, "embeddings": 1e-4, "encoder": 1e-4}),  # 1/100 of the LR
])


def rows(name: str, n: int = 24) -> ph.Seq2SeqLMDataset:
    return ph.Seq2SeqLMDataset(H.reverse_rows(name, n))


class Phases:
    def __init__(self):
        self.cached = {}

    def on_phase_start(self, trainer, span):
        self.cached[span.phase.name] = trainer.cache is not None


def make(name="t5", seed=0, run_dir=None, cache="auto", plan=PLAN):
    model = H.build(name, seed=seed)
    parts = ph.parts(model)
    phases = Phases()
    trainer = pw.Trainer(model, parts, plan, ph.Seq2SeqLMTask(), run_dir=run_dir, batch_size=8,
                         collate_fn=ph.Seq2SeqLMCollator(H.PAD), cache=cache, guard=True, callbacks=[phases])
    return model, trainer, phases


def test_decoder_first_then_encoder_at_low_lr_encoder_fixed_in_phase_one():
    model, trainer, phases = make()
    enc0 = {n: p.detach().clone() for n, p in model.encoder.named_parameters()}
    seen = {}

    class Watch:
        def on_phase_start(self, trainer, span):
            if span.index == 1:
                seen["encoder"] = all(torch.equal(p, enc0[n]) for n, p in model.encoder.named_parameters())

    trainer.callbacks.append(Watch())
    history = trainer.fit(rows("t5"), rows("t5", 6))
    assert seen["encoder"]  # phase one left the encoder (and the shared embedding) bit-identical
    assert not all(torch.equal(p, enc0[n]) for n, p in model.encoder.named_parameters())  # phase two moved it
    assert phases.cached == {"decoder first": True, "all": False}
    lrs = {g["part"]: g["base_lr"] for g in trainer.optimizer.param_groups}
    assert lrs == {"encoder": 1e-4, "embeddings": 1e-4, "decoder": 1e-2}
    assert {"dev_loss", "dev_token_acc", "dev_seq_acc"} <= set(history[-1])


@pytest.mark.parametrize("stop_at", [4, 7])  # inside phase one (cached) and inside phase two
def test_resume_is_bit_identical(tmp_path, stop_at):
    model_a, trainer_a, _ = make()
    hist_a = trainer_a.fit(rows("t5"), rows("t5", 6))
    run = tmp_path / "run"
    _, trainer_b, _ = make(run_dir=run)
    trainer_b.fit(rows("t5"), rows("t5", 6), max_steps=stop_at)
    assert _checkpoint.read_meta(_checkpoint.resolve_checkpoint(run))["step"] == stop_at
    model_c, trainer_c, _ = make(seed=123, run_dir=run)  # other init: everything comes from the checkpoint
    hist_c = trainer_c.fit(rows("t5"), rows("t5", 6), resume=run)
    for (k, a), c in zip(model_a.state_dict().items(), model_c.state_dict().values(), strict=True):
        assert torch.equal(a, c), k
    assert [h["dev_loss"] for h in hist_a] == [h["dev_loss"] for h in hist_c]


@pytest.mark.parametrize("name", ["t5", "bart", "whisper"])
def test_cached_and_live_encoder_outputs_equal(name):
    model = H.build(name)
    parts = ph.parts(model)
    parts.freeze(*[p for p in ("encoder", "embeddings") if p in parts])
    parts.train()
    task, data, collate = ph.Seq2SeqLMTask(), rows(name), ph.Seq2SeqLMCollator(H.PAD)
    cache = EncoderCache.build(task, model, data, collate, torch.device("cpu"), batch_size=5)
    batch = collate([data[i] for i in (7, 2, 12, 5)])
    live, cached = task.encode(model, batch), cache.lookup(batch, torch.device("cpu"))
    real = (batch["attention_mask"].bool() if "attention_mask" in batch
            else torch.ones(live.hidden.shape[:2], dtype=torch.bool))
    torch.testing.assert_close(cached.hidden[real], live.hidden[real], rtol=1e-5, atol=1e-6)
    if "attention_mask" in batch:
        assert torch.equal(cached.mask, batch["attention_mask"])
    ctx = pw.StepContext(0, 0, "p")
    model.eval()  # no decoder dropout: the same loss from cached and live encoder outputs
    with torch.no_grad():
        torch.testing.assert_close(task.loss_from_encoding(model, batch, cached, ctx), task.loss(model, batch, ctx))


@pytest.mark.parametrize("name", ["t5", "whisper"])
def test_training_with_and_without_the_cache_agrees(name):
    plan = pw.Plan([pw.Phase("decoder", epochs=2, train={"decoder": 1e-2})])
    model_a, trainer_a, phases_a = make(name, cache="on", plan=plan)
    model_b, trainer_b, phases_b = make(name, cache="off", plan=plan)
    trainer_a.fit(rows(name))
    trainer_b.fit(rows(name))
    assert phases_a.cached == {"decoder": True} and phases_b.cached == {"decoder": False}
    for (k, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=k)


def test_no_cache_while_the_shared_embedding_trains():
    plan = pw.Plan([pw.Phase("decoder+embeddings", epochs=1, train={"decoder": 1e-2, "embeddings": 1e-3})])
    model, trainer, phases = make(plan=plan)
    before = model.shared.weight.detach().clone()
    trainer.fit(rows("t5"))
    # the encoder reads the shared embedding, which trains: its outputs change, nothing is cached
    assert phases.cached == {"decoder+embeddings": False}
    assert not torch.equal(model.encoder.embed_tokens.weight, before)
