"""partwise.hf.Seq2SeqLMTask: the model's own loss, teacher forcing and scheduled sampling, generate-based
evaluation, training by plan with exact resume, and the frozen-encoder cache."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")

import hf_models as H  # noqa: E402
import torch  # noqa: E402

import partwise as pw  # noqa: E402
import partwise.hf as ph  # noqa: E402
from partwise.hf._teacher_forcing import _stepwise  # noqa: E402
from partwise.seq2seq import TeacherForcing, tf_linear  # noqa: E402


def batch(name: str, seed: int = 0) -> dict:
    return {**H.encoder_inputs(name, seed=seed), "labels": H.labels(seed=seed + 1)}


def ctx(step: int = 0, tf=None) -> pw.StepContext:
    return pw.StepContext(step, 0, "p", {} if tf is None else {"teacher_forcing": tf})


@pytest.mark.parametrize("name", ["t5", "bart", "marian", "whisper", "bert2bert"])
def test_loss_equals_the_models_own_labels_loss(name):
    model = H.build(name).eval()
    b = batch(name)
    with torch.no_grad(), pytest.warns() if name == "bert2bert" else _nothing():
        own = model(**b).loss
        ours = ph.Seq2SeqLMTask().loss(model, b, ctx())
    torch.testing.assert_close(ours, own)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def test_padding_is_ignored():
    model = H.build("t5").eval()
    b = batch("t5")
    longer = {**b, "labels": torch.cat([b["labels"], torch.full((3, 4), -100)], dim=1)}
    task = ph.Seq2SeqLMTask()
    with torch.no_grad():
        torch.testing.assert_close(task.loss(model, b, ctx()), task.loss(model, longer, ctx()))


@pytest.mark.parametrize("name", ["t5", "bart", "whisper"])
def test_two_pass_and_exact_at_ratio_one_equal_teacher_forcing(name):
    model = H.build(name).eval()
    b, task = batch(name), ph.Seq2SeqLMTask()
    with torch.no_grad():
        plain = task.logits(model, b, ctx())
        for tf in (TeacherForcing(1.0, per="token", mode="two_pass"), TeacherForcing(1.0, mode="exact")):
            assert torch.equal(task.logits(model, b, ctx(5, tf)), plain)
            assert tf.last_stats.parallel and tf.last_stats.gold_fraction == 1.0


@pytest.mark.parametrize("name", ["t5", "bart", "whisper", "bert2bert"])
def test_stepwise_decoding_with_the_kv_cache_matches_the_parallel_pass(name):
    model = H.build(name).eval()
    b, task = batch(name), ph.Seq2SeqLMTask()
    with torch.no_grad():
        enc = task.encode(model, b)
        _, labels, dec = task.split(model, b)
        gold = torch.ones_like(dec, dtype=torch.bool)
        stepwise = _stepwise(model, enc, dec, gold, TeacherForcing(0.5), None)
        torch.testing.assert_close(stepwise, task.logits(model, b), rtol=1e-4, atol=1e-5)


def test_two_pass_at_ratio_zero_feeds_the_first_pass_predictions():
    model = H.build("bart").eval()
    b, task = batch("bart"), ph.Seq2SeqLMTask()
    tf = TeacherForcing(0.0, per="token", mode="two_pass")
    with torch.no_grad():
        first = task.logits(model, b)
        _, labels, dec = task.split(model, b)
        mixed = torch.cat([dec[:, :1], first[:, :-1].argmax(-1)], dim=1)
        keep = torch.cat([torch.ones_like(labels[:, :1], dtype=torch.bool), labels[:, :-1] == -100], dim=1)
        mixed = torch.where(keep, dec, mixed)  # padding positions keep their gold (pad) input
        expected = model(**H.encoder_inputs("bart"), decoder_input_ids=mixed).logits
        assert torch.equal(task.logits(model, b, ctx(0, tf)), expected)
    assert tf.last_stats.gold_fraction == 0.0 and tf.last_stats.parallel


def test_scheduled_sampling_follows_the_schedule_per_token():
    model = H.build("t5")
    b = {**H.encoder_inputs("t5", batch=64), "labels": H.labels(batch=64, length=12)}
    b["labels"][:, -1] = 2
    tf = TeacherForcing(tf_linear(c=0.5 / 100, k=1.0, eps=0.5), per="token", mode="two_pass")
    task = ph.Seq2SeqLMTask(teacher_forcing=tf)
    torch.manual_seed(0)
    loss = task.loss(model, b, ctx(100))
    loss.backward()  # the second pass carries the gradient
    assert tf.last_stats.ratio == 0.5 and abs(tf.last_stats.gold_fraction - 0.5) < 0.06
    assert model.lm_head.weight.grad is not None


def test_exact_mode_runs_token_by_token_with_gradient():
    model = H.build("marian")
    tf = TeacherForcing(0.0, per="sequence", mode="exact")
    loss = ph.Seq2SeqLMTask(teacher_forcing=tf).loss(model, batch("marian"), ctx())
    loss.backward()
    assert not tf.last_stats.parallel and model.model.encoder.layers[0].fc1.weight.grad is not None


def test_evaluate_gives_loss_accuracies_and_user_metrics():
    model = H.build("t5").eval()
    seen = {}

    def metric_fn(predictions, references):
        seen.update(predictions=predictions, references=references)
        return {"exact": sum(p == r for p, r in zip(predictions, references, strict=True)) / len(references)}

    task = ph.Seq2SeqLMTask(metric_fn=metric_fn, num_beams=2, max_new_tokens=6)
    scores = task.evaluate(model, [batch("t5"), batch("t5", seed=3)])
    assert set(scores) == {"loss", "token_acc", "seq_acc", "exact"} and scores["exact"] == scores["seq_acc"]
    labels = H.labels()
    assert seen["references"][:3] == [[t for t in row if t not in (-100, H.EOS)] for row in labels.tolist()]
    assert all(len(p) <= 6 and H.EOS not in p for p in seen["predictions"])


def test_evaluate_seq_acc_is_one_when_generate_reproduces_the_labels():
    model = H.build("bart").eval()
    b = H.encoder_inputs("bart")
    with torch.no_grad():
        out = model.generate(**b, max_new_tokens=4, do_sample=False, num_beams=1)
    labels = torch.cat([out[:, 1:], torch.full((3, 1), H.EOS)], dim=1)  # the generated tokens, then EOS
    scores = ph.Seq2SeqLMTask(max_new_tokens=4).evaluate(model, [{**b, "labels": labels}])
    assert scores["seq_acc"] == 1.0


def test_bad_batches_and_options_fail_with_one_clear_error():
    with pytest.raises(TypeError, match="dicts with 'labels'"):
        ph.Seq2SeqLMTask().loss(H.build("t5"), {"input_ids": torch.ones(1, 2, dtype=torch.long)}, ctx())
    with pytest.raises(ValueError, match="num_beams"):
        ph.Seq2SeqLMTask(num_beams=0)
    with pytest.raises(pw.CacheRefused, match="row id"):
        ph.Seq2SeqLMTask().row_ids({"labels": torch.ones(1, 1)})
