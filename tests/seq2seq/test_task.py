"""Seq2SeqTask under the trainer: a plan with scheduled sampling on real CMUdict words."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

import partwise as pw
from partwise.data import BucketBatchSampler, collate, make_g2p_datasets
from partwise.seq2seq import Seq2SeqTask, TeacherForcing, gru_seq2seq, tf_inverse_sigmoid


def test_g2p_trains_with_separate_optimizers_and_scheduled_sampling(tmp_path):
    data = make_g2p_datasets(limit=400)
    torch.manual_seed(0)
    model = gru_seq2seq(len(data.src_vocab), len(data.tgt_vocab), emb=32, hidden=64, attention="dot", dropout=0.0)
    parts = pw.Parts(model)
    tf = TeacherForcing(tf_inverse_sigmoid(20.0), per="token", mode="two_pass")
    plan = pw.Plan([
        pw.Phase("warm", epochs=3, train={"encoder": 3e-3, "decoder": 1e-2}, separate=True),
        pw.Phase("sampled", epochs=2, train={"encoder": 3e-3, "decoder": 1e-2}, separate=True,
                 task_options={"teacher_forcing": tf}),
    ])
    task = Seq2SeqTask(tgt_vocab=data.tgt_vocab, metric_names=("wer", "per"))  # G2P names
    untrained = task.evaluate(model.eval(), DataLoader(data.dev, batch_size=128, collate_fn=collate), data.dev)
    loader = DataLoader(data.train, batch_sampler=BucketBatchSampler(data.train.lengths, 32, seed=0),
                        collate_fn=collate)
    trainer = pw.Trainer(model, parts, plan, task, run_dir=tmp_path, batch_size=64, collate_fn=collate, device="cpu")
    ratios = []
    trainer.callbacks.append(type("R", (), {"on_step_end": lambda s, tr, logs: ratios.append(tf.ratio(tr.step))})())
    history = trainer.fit(loader, data.dev)
    assert isinstance(trainer.optimizer, pw.OptimizerSet)
    assert set(trainer.optimizer.optimizers) == {"encoder", "decoder"}
    first, last = history[0], history[-1]
    assert set(last) >= {"dev_loss", "dev_token_acc", "dev_wer", "dev_per"}
    assert 0.0 <= last["dev_wer"] <= 1.0 and 0.0 <= last["dev_per"]
    assert last["dev_loss"] < first["dev_loss"] and last["dev_token_acc"] > first["dev_token_acc"]
    assert last["dev_per"] < 0.5 * untrained["per"]  # a tiny run already far below the untrained model
    assert ratios[-1] < ratios[0]  # the teacher-forcing ratio decays with the trainer's step
