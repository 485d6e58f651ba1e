import torch
from torch import nn
from torch.utils.data import TensorDataset

import partwise as pw


def make_model(classes):
    torch.manual_seed(0)
    model = nn.Module()
    model.encoder = nn.Sequential(nn.Linear(8, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 16))
    model.head = nn.Linear(16, classes)
    return model

def loss_fn(model, batch):
    return nn.functional.cross_entropy(model.head(model.encoder(batch[0])), batch[1])

x = torch.randn(512, 8, generator=torch.Generator().manual_seed(1))
old_task = TensorDataset(x, (x[:, 0] > 0).long())                                  # 2 classes
new_task = TensorDataset(x, (x[:, :2].sum(1) > 0).long() + (x[:, 2] > 0).long())   # 3 classes

old = make_model(2)
pw.Trainer(old, pw.Parts(old), pw.Plan([pw.Phase("all", epochs=3, train={"encoder": 1e-2, "head": 1e-2})]),
           loss_fn, run_dir="runs/old_task", batch_size=32).fit(old_task)

model = make_model(2)
pw.load_part(model, "encoder", "runs/old_task")          # the kept encoder (the run's latest checkpoint here)
pw.replace_module(model, "head", nn.Linear(16, 3))      # a new head for the new task
plan = pw.Plan.fine_tune(head="head", body="encoder", lr=1e-2, epochs=3, freeze_epochs=2, body_lr_ratio=0.01)
print(plan.describe(pw.Parts(model), steps_per_epoch=16))
trainer = pw.Trainer(model, pw.Parts(model), plan, loss_fn, batch_size=32, guard=True)
history = trainer.fit(new_task)
print(trainer.stop_reason, [round(h["train_loss"], 3) for h in history])
