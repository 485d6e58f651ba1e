"""Renamed things keep working for what was written under the old names: the held-out split is ``dev``
(``val_*`` metric names and log columns are read as ``dev_*``)."""

from __future__ import annotations

import torch
from torch import nn

import partwise as pw
from partwise.cli._runlog import read_rows


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
