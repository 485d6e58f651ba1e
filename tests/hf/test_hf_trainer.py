"""Plans inside the real ``transformers.Seq2SeqTrainer``: frozen means frozen through HF's
``model.train()``, per-part learning rates, the unfreeze, exact resume, scheduled sampling and the
frozen-encoder cache; on tiny random-init T5, BART and Whisper (no downloads)."""

from __future__ import annotations

import json
import warnings

import pytest

pytest.importorskip("transformers")

import hf_models as H  # noqa: E402
import torch  # noqa: E402
import transformers as tf  # noqa: E402
from torch import nn  # noqa: E402

import partwise as pw  # noqa: E402
import partwise.hf as ph  # noqa: E402
from partwise.seq2seq import TeacherForcing, tf_constant  # noqa: E402

ROWS, BATCH = 16, 4  # 4 optimizer steps per epoch


def rows(name: str, n: int = ROWS) -> list[dict]:
    return H.reverse_rows(name, n)


def model_of(name: str, dropout: float = 0.0) -> nn.Module:
    model = H.build(name)
    for m in model.modules():  # dropout on, so a frozen encoder left in train mode would show it
        if isinstance(m, nn.Dropout):
            m.p = dropout
    return model


def plan_of(name: str, steps: tuple[int, int] = (4, 4)) -> pw.Plan:
    first = {"decoder": 1e-2}  # the head is tied to the shared embedding, frozen with the encoder
    later = {**first, "encoder": 1e-4}
    return pw.Plan([pw.Phase("decoder", steps=steps[0], train=first),
                    pw.Phase("all", steps=steps[1], train=later)])


def arguments(tmp_path, **kw) -> tf.Seq2SeqTrainingArguments:
    base = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=BATCH, max_steps=8, report_to=[],
                save_strategy="no", logging_steps=1, use_cpu=True, seed=0, disable_tqdm=True,
                dataloader_num_workers=0)
    return tf.Seq2SeqTrainingArguments(**{**base, **kw})


def trainer(name: str, tmp_path, model: nn.Module | None = None, plan: pw.Plan | None = None, rows_=None,
            collator=None, **kw) -> ph.PartwiseSeq2SeqTrainer:
    model = model if model is not None else model_of(name)
    options = {k: kw.pop(k) for k in ("guard", "cache", "task", "allow_plan_change", "callbacks") if k in kw}
    return ph.PartwiseSeq2SeqTrainer(
        model, arguments(tmp_path, **kw), plan=plan or plan_of(name), train_dataset=ph.Seq2SeqLMDataset(
            rows_ if rows_ is not None else rows(name)), data_collator=collator or ph.Seq2SeqLMCollator(H.PAD),
        **options)


def losses(tr: tf.Trainer) -> list[float]:
    return [h["loss"] for h in tr.state.log_history if "loss" in h and "train_loss" not in h]


class AtStep(tf.TrainerCallback):
    """Records, at the end of each optimizer step, what a user would check."""

    def __init__(self, model: nn.Module, parts: pw.Parts):
        self.model, self.parts, self.seen = model, parts, []

    def on_step_end(self, args, state, control, optimizer=None, **kw):
        trainer_opt = kw.get("optimizer", optimizer)
        encoder = self.model.get_encoder()
        self.seen.append({
            "step": state.global_step,
            "encoder": {k: v.clone() for k, v in encoder.state_dict().items()},
            "state_bytes": pw.state_bytes(getattr(trainer_opt, "optimizer", trainer_opt), self.parts)
            if trainer_opt is not None else None})


@pytest.mark.parametrize("name", ["t5", "bart", "whisper"])
def test_frozen_encoder_stays_bit_identical_and_in_eval_then_trains_at_its_own_lr(tmp_path, name):
    model = model_of(name, dropout=0.3)
    parts = ph.parts(model)
    encoder = model.get_encoder()
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    dropout_modes: list[tuple[int, bool]] = []
    for m in encoder.modules():  # HF layers call functional dropout with training=self.training
        m.register_forward_hook(lambda mod, i, o: dropout_modes.append((len(dropout_modes), mod.training)))
    probe = AtStep(model, parts)
    tr = trainer(name, tmp_path, model=model, plan=plan_of(name), guard=True, cache="off", callbacks=[probe])
    tr.parts = parts  # the test's own registry is the one the plan follows
    assert tr.plan_driver.parts.names == parts.names
    tr.train()

    after_phase0 = probe.seen[3]  # end of optimizer step 4: the last step of the frozen phase
    assert after_phase0["step"] == 4
    assert all(torch.equal(before[k], v) for k, v in after_phase0["encoder"].items()), "frozen encoder moved"
    assert after_phase0["state_bytes"]["encoder"] == 0 and after_phase0["state_bytes"]["decoder"] > 0
    # every encoder module ran in eval mode (dropout off) in the frozen phase, whatever HF's model.train()
    # did, and in train mode once the encoder trains (4 steps each, the same modules every step)
    half = len(dropout_modes) // 2
    assert half and not any(mode for _, mode in dropout_modes[:half])
    assert any(mode for _, mode in dropout_modes[half:])  # (the frozen shared embedding stays in eval)
    final = encoder.state_dict()
    assert any(not torch.equal(before[k], final[k]) for k in before), "the encoder did not train after the unfreeze"
    lrs = {g["part"]: g["lr"] for g in tr.optimizer.param_groups if g["params"]}
    assert lrs["encoder"] == pytest.approx(1e-4) and lrs["decoder"] == pytest.approx(1e-2)
    logged = [h for h in tr.state.log_history if "learning_rate/encoder" in h]
    assert logged and logged[-1]["learning_rate/encoder"] == pytest.approx(1e-4)


def test_the_optimizer_and_scheduler_hf_holds_are_the_plans_for_the_whole_run(tmp_path):
    tr = trainer("bart", tmp_path, cache="off")
    tr.train()
    assert isinstance(tr.lr_scheduler, ph.PlanLR)
    inner = getattr(tr.optimizer, "optimizer", tr.optimizer)
    assert inner is tr.plan_driver.optimizer
    parts_in_groups = [g["part"] for g in inner.param_groups]
    assert set(parts_in_groups) == set(tr.plan_driver.parts.names)


def _train_with_checkpoints(name: str, tmp_path, **kw) -> tuple[ph.PartwiseSeq2SeqTrainer, dict]:
    torch.manual_seed(0)
    tr = trainer(name, tmp_path, model=model_of(name, dropout=0.1), save_strategy="steps", save_steps=2,
                 cache="off", **kw)
    tr.train()
    return tr, {k: v.clone() for k, v in tr.model.state_dict().items()}


@pytest.mark.parametrize("name,at", [("t5", 2), ("bart", 6), ("whisper", 4)])
def test_resume_from_a_checkpoint_ends_bit_identical_to_an_uninterrupted_run(tmp_path, name, at):
    full, want = _train_with_checkpoints(name, tmp_path)
    checkpoint = tmp_path / "out" / f"checkpoint-{at}"
    state = json.loads((checkpoint / ph.PLAN_STATE_NAME).read_text())
    assert state["phase"] == (0 if at <= 4 else 1)

    torch.manual_seed(123)  # what the resumed process did before does not matter
    resumed = trainer(name, tmp_path, model=model_of(name, dropout=0.1), save_strategy="no", cache="off")
    resumed.train(resume_from_checkpoint=str(checkpoint))
    got = resumed.model.state_dict()
    differ = [k for k in want if not torch.equal(want[k], got[k])]
    assert not differ, f"{len(differ)} tensors differ after resuming at step {at}: {differ[:3]}"
    assert losses(resumed) == losses(full)  # the first `at` restored from the checkpoint, the rest recomputed


def test_resume_under_another_plan_is_refused_and_allowed_on_request(tmp_path):
    _train_with_checkpoints("bart", tmp_path)
    checkpoint = str(tmp_path / "out" / "checkpoint-6")
    other = plan_of("bart", steps=(3, 5))
    with pytest.raises(pw.ConfigError, match="resume"):
        trainer("bart", tmp_path, plan=other, cache="off").train(resume_from_checkpoint=checkpoint)
    allowed = trainer("bart", tmp_path, plan=other, cache="off", allow_plan_change=True)
    with pytest.warns(RuntimeWarning, match="changed plan"):
        allowed.train(resume_from_checkpoint=checkpoint)
    assert allowed.plan_driver.plan_changes


def test_a_checkpoint_without_plan_state_is_refused(tmp_path):
    _train_with_checkpoints("bart", tmp_path)
    checkpoint = tmp_path / "out" / "checkpoint-2"
    (checkpoint / ph.PLAN_STATE_NAME).unlink()
    with pytest.raises(pw.ConfigError, match="resume_from_checkpoint: .* has no partwise_plan.json"):
        trainer("bart", tmp_path, cache="off").train(resume_from_checkpoint=str(checkpoint))


def _plain_and_sampled(tmp_path, ratio: float) -> tuple[ph.PartwiseSeq2SeqTrainer, ph.PartwiseSeq2SeqTrainer,
                                                        TeacherForcing]:
    """The same run with plain teacher forcing and with two-pass scheduled sampling at ``ratio``
    (a phase's ``task_options``)."""
    plain = trainer("bart", tmp_path, cache="off")
    plain.train()
    tf_ = TeacherForcing(tf_constant(ratio), mode="two_pass")
    phases = [pw.Phase(p.name, steps=p.steps, train=p.train, task_options={"teacher_forcing": tf_})
              for p in plan_of("bart").phases]
    sampled = trainer("bart", tmp_path, plan=pw.Plan(phases), cache="off")
    sampled.train()
    return plain, sampled, tf_


def test_scheduled_sampling_at_ratio_one_equals_teacher_forcing(tmp_path):
    plain, sampled, _ = _plain_and_sampled(tmp_path, 1.0)
    assert losses(sampled) == losses(plain)
    assert all(torch.equal(a, b) for a, b in zip(plain.model.state_dict().values(),
                                                 sampled.model.state_dict().values(), strict=True))


def test_scheduled_sampling_below_ratio_one_changes_the_decoder_inputs(tmp_path):
    plain, sampled, half = _plain_and_sampled(tmp_path, 0.5)
    assert losses(sampled) != losses(plain)
    assert half.last_stats is not None and half.last_stats.gold_fraction < 1.0


@pytest.mark.parametrize("name", ["t5", "whisper"])
def test_cache_on_and_off_give_the_same_losses(tmp_path, name):
    off = trainer(name, tmp_path, cache="off")
    off.train()
    on = trainer(name, tmp_path, cache="on")
    on.train()
    assert on._phase_cache is not None and on._phase_cache.cache is None  # dropped when the encoder trains
    assert on._phase_cache.refusals == []
    assert losses(on) == pytest.approx(losses(off), rel=1e-5, abs=1e-6)


def test_cache_is_used_while_the_encoder_is_frozen(tmp_path):
    tr = trainer("bart", tmp_path, cache="on", max_steps=4, plan=plan_of("bart", steps=(4, 4)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the run stops at the plan's first phase end
        tr.train()
    cache = tr._phase_cache.cache
    assert cache is not None and cache.verified and len(cache) == ROWS


class _NoIndexCollator:
    """A user's own collator: padded dict batches, no row ids."""

    def __call__(self, rows_):
        return ph.Seq2SeqLMCollator(H.PAD)([{k: v for k, v in r.items() if k != "index"} for r in rows_])


def test_cache_auto_without_row_ids_falls_back_with_one_warning_and_on_refuses(tmp_path):
    with pytest.warns(RuntimeWarning, match="frozen-encoder cache not used: .*row id") as caught:
        tr = trainer("bart", tmp_path, cache="auto", collator=_NoIndexCollator())
        tr.train()
    assert len([w for w in caught if "frozen-encoder cache" in str(w.message)]) == 1
    assert len(losses(tr)) == 8
    with pytest.raises(pw.ConfigError, match="cache: 'on', but .*row id"):
        trainer("bart", tmp_path, cache="on", collator=_NoIndexCollator()).train()


def test_gradient_accumulation_counts_optimizer_steps_for_the_plan(tmp_path):
    tr = trainer("bart", tmp_path, gradient_accumulation_steps=2, per_device_train_batch_size=2, cache="off",
                 guard=True)
    tr.train()
    assert tr.state.global_step == 8 and tr.plan_driver.span.phase.name == "all"
    assert tr.plan_driver.steps_per_epoch == ROWS // (2 * 2)


def test_plan_and_trainer_lengths_that_differ_are_warned_about(tmp_path):
    tr = trainer("bart", tmp_path, max_steps=6, cache="off")
    with pytest.warns(RuntimeWarning, match="will run 6 optimizer steps, the plan 8: it stops in phase 'all'"):
        tr.train()


def test_evaluation_with_generate_is_hfs_own(tmp_path):
    data = ph.Seq2SeqLMDataset(rows("bart", 8))
    tr = ph.PartwiseSeq2SeqTrainer(
        model_of("bart"), arguments(tmp_path, predict_with_generate=True, eval_strategy="steps", eval_steps=4,
                                    generation_max_length=8, per_device_eval_batch_size=4),
        plan=plan_of("bart"), train_dataset=ph.Seq2SeqLMDataset(rows("bart")), eval_dataset=data,
        data_collator=ph.Seq2SeqLMCollator(H.PAD), cache="off")
    tr.train()
    evals = [h for h in tr.state.log_history if "eval_loss" in h]
    assert len(evals) == 2 and all(h["eval_loss"] > 0 for h in evals)
    out = tr.predict(data)
    assert out.predictions.shape[0] == 8


def test_load_best_model_and_save_total_limit_work_with_a_plan(tmp_path):
    data = ph.Seq2SeqLMDataset(rows("bart", 8))
    tr = ph.PartwiseSeq2SeqTrainer(
        model_of("bart"), arguments(tmp_path, eval_strategy="steps", eval_steps=2, save_strategy="steps",
                                    save_steps=2, save_total_limit=2, load_best_model_at_end=True,
                                    metric_for_best_model="loss"),
        plan=plan_of("bart"), train_dataset=ph.Seq2SeqLMDataset(rows("bart")), eval_dataset=data,
        data_collator=ph.Seq2SeqLMCollator(H.PAD), guard=True, cache="off")
    tr.train()
    kept = sorted(p.name for p in (tmp_path / "out").glob("checkpoint-*"))
    assert 1 <= len(kept) <= 3 and all((tmp_path / "out" / k / ph.PLAN_STATE_NAME).is_file() for k in kept)


@pytest.mark.parametrize("bad,match", [
    ({"optimizers": (torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1), None)}, "optimizers: the plan"),
    ({"optimizer_cls_and_kwargs": (torch.optim.SGD, {"lr": 0.1})}, "optimizer_cls_and_kwargs"),
])
def test_an_optimizer_from_elsewhere_is_refused(tmp_path, bad, match):
    with pytest.raises(pw.ConfigError, match=match):
        ph.PartwiseSeq2SeqTrainer(model_of("bart"), arguments(tmp_path), plan=plan_of("bart"),
                                  train_dataset=ph.Seq2SeqLMDataset(rows("bart")), **bad)


def test_separate_optimizers_and_unknown_parts_are_refused_before_training(tmp_path):
    sep = pw.Plan([pw.Phase("d", steps=2, train={"decoder": 1e-3}, separate=True)])
    with pytest.raises(pw.ConfigError, match="separate=True"):
        trainer("bart", tmp_path, plan=sep)
    with pytest.raises(pw.ConfigError, match="unknown part 'decoderr'"):
        trainer("bart", tmp_path, plan=pw.Plan([pw.Phase("d", steps=2, train={"decoderr": 1e-3})]))


def test_warmup_arguments_are_warned_about_as_unused(tmp_path):
    with pytest.warns(RuntimeWarning, match="warmup_steps=3: not used"):
        trainer("bart", tmp_path, warmup_steps=3)


def test_partwise_trainer_the_plain_hf_trainer_follows_the_plan_too(tmp_path):
    model = model_of("bart")
    before = {k: v.clone() for k, v in model.get_encoder().state_dict().items()}
    tr = ph.PartwiseTrainer(model, tf.TrainingArguments(
        output_dir=str(tmp_path / "o"), per_device_train_batch_size=BATCH, max_steps=4, report_to=[],
        save_strategy="no", use_cpu=True, disable_tqdm=True),
        plan=pw.Plan([pw.Phase("decoder", steps=4, train={"decoder": 1e-2})]),
        train_dataset=ph.Seq2SeqLMDataset(rows("bart")), data_collator=ph.Seq2SeqLMCollator(H.PAD), guard=True)
    tr.train()
    assert all(torch.equal(before[k], v) for k, v in model.get_encoder().state_dict().items())


def test_bf16_on_cpu_trains_with_the_plan_and_keeps_the_frozen_encoder(tmp_path):
    model = model_of("whisper")
    before = {k: v.clone() for k, v in model.get_encoder().state_dict().items()}
    tr = trainer("whisper", tmp_path, model=model, bf16=True, cache="auto", guard=True, max_steps=4,
                 plan=plan_of("whisper", steps=(4, 4)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the run stops at the plan's first phase end
        tr.train()
    assert tr._phase_cache.cache is not None and tr._phase_cache.refusals == []
    assert all(torch.equal(before[k], v) for k, v in model.get_encoder().state_dict().items())
    assert all(torch.isfinite(torch.tensor(losses(tr))))


def test_optimizer_arguments_hf_would_use_are_warned_about_as_unused(tmp_path):
    """The plan gives every part its optimizer: TrainingArguments' learning rate, weight decay and
    optimizer name would otherwise be silently ignored."""
    with pytest.warns(RuntimeWarning, match=r"learning_rate=0\.0003, weight_decay=0\.1, optim='adafactor': not used"):
        trainer("bart", tmp_path, learning_rate=3e-4, weight_decay=0.1, optim="adafactor")


def test_a_loss_function_from_elsewhere_is_refused(tmp_path):
    with pytest.raises(pw.ConfigError, match="compute_loss_func: the task computes the training loss"):
        ph.PartwiseSeq2SeqTrainer(model_of("bart"), arguments(tmp_path), plan=plan_of("bart"),
                                  train_dataset=ph.Seq2SeqLMDataset(rows("bart")),
                                  compute_loss_func=lambda outputs, labels, num_items_in_batch=None: outputs.loss)


class _Stream(torch.utils.data.IterableDataset):
    """A user's streaming dataset: no length, no random access."""

    def __iter__(self):
        yield from ph.Seq2SeqLMDataset(rows("bart"))


def test_cache_auto_on_an_iterable_dataset_falls_back_and_on_refuses(tmp_path):
    with pytest.warns(RuntimeWarning, match="frozen-encoder cache not used: the training data is an iterable dataset"):
        tr = ph.PartwiseSeq2SeqTrainer(model_of("bart"), arguments(tmp_path), plan=plan_of("bart"),
                                       train_dataset=_Stream(), data_collator=ph.Seq2SeqLMCollator(H.PAD))
        tr.train()
    assert tr.state.global_step == 8
    on = ph.PartwiseSeq2SeqTrainer(model_of("bart"), arguments(tmp_path), plan=plan_of("bart"), cache="on",
                                   train_dataset=_Stream(), data_collator=ph.Seq2SeqLMCollator(H.PAD))
    with pytest.raises(pw.ConfigError, match="cache: 'on', but the training data is an iterable dataset"):
        on.train()


def test_a_second_train_call_on_other_data_builds_a_new_cache(tmp_path):
    """The cache belongs to one train() call: rows of another dataset with the same row ids must never
    get the first dataset's encoder outputs."""
    tr = trainer("bart", tmp_path, cache="on", max_steps=4, plan=plan_of("bart", steps=(4, 4)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the run stops at the plan's first phase end
        tr.train()
        first = tr._phase_cache.cache
        other = [{**r, "input_ids": list(reversed(r["input_ids"]))} for r in rows("bart")]
        tr.train_dataset = ph.Seq2SeqLMDataset(other)
        tr.train()
    second = tr._phase_cache.cache
    assert first is not None and second is not None and second is not first
    row = other[0]
    batch = ph.Seq2SeqLMCollator(H.PAD)([{**row, "index": 0}])
    live = tr.task.encode(tr.model, batch).hidden[0]
    assert torch.allclose(second.rows([0])[0]["hidden"], live, atol=1e-6)
