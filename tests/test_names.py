"""Renamed things keep working for what was written under the old names: the held-out split is ``dev``
(``val_*`` metric names and log columns are read as ``dev_*``), and checkpoints fingerprinted with a
``teacher_forcing`` phase field and the former schedule class names still resume."""

from __future__ import annotations

import torch
from torch import nn

import partwise as pw
from partwise._fingerprint import plan_differences, plan_fingerprint
from partwise.cli._runlog import read_rows
from partwise.seq2seq import TeacherForcing, tf_inverse_sigmoid


def test_an_older_checkpoint_fingerprint_matches_the_same_plan_today():
    tf = TeacherForcing(tf_inverse_sigmoid(100.0), per="token", mode="two_pass")
    plan = pw.Plan([pw.Phase("a", epochs=1, train={"dec": 1e-3}),
                    pw.Phase("b", epochs=1, train={"dec": 1e-3}, task_options={"teacher_forcing": tf})])
    now = plan_fingerprint(plan, 5)
    old = {"steps_per_epoch": 5, "phases": []}
    for ph in now["phases"]:  # as written before task_options: the option itself, under its old class name
        legacy = {k: v for k, v in ph.items() if k != "task_options"}
        value = (ph["task_options"].removeprefix("{'teacher_forcing': ").removesuffix("}")
                 if ph["task_options"] != "{}" else "None")
        legacy["teacher_forcing"] = value.replace("InverseSigmoidTFSchedule(", "InverseSigmoidSchedule(")
        old["phases"].append(legacy)
    assert "InverseSigmoidSchedule(k=100.0)" in old["phases"][1]["teacher_forcing"]
    assert plan_differences(old, now) == []
    changed = pw.Plan([plan.phases[0], pw.Phase("b", epochs=1, train={"dec": 1e-3})])
    assert plan_differences(old, plan_fingerprint(changed, 5)) == [
        f"phase 1 ('b').task_options: checkpoint {now['phases'][1]['task_options']}, now {{}}"]


def test_older_val_metric_names_still_select_the_dev_metric(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 2))
    data = [(torch.randn(2), torch.randn(2)) for _ in range(8)]
    trainer = pw.Trainer(model, pw.Parts(model), pw.Plan([pw.Phase("all", epochs=2, train={"0": 1e-2})]),
                         lambda m, b: nn.functional.mse_loss(m(b[0]), b[1]), batch_size=4,
                         best_metric=("val_loss", "min"), early_stopping=pw.EarlyStopping("val_loss", patience=5))
    history = trainer.fit(data, data[:4])
    assert "dev_loss" in history[-1] and not [k for k in history[-1] if k.startswith("val_")]
    assert trainer.best == min(h["dev_loss"] for h in history)


def test_older_val_columns_are_read_as_dev(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,train_loss,val_loss,val_wer\n1,1.0,0.9,0.5\n")
    header, rows = read_rows(path)
    assert header == ["epoch", "train_loss", "dev_loss", "dev_wer"] and rows[0]["dev_wer"] == "0.5"
