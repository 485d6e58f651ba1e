import torch
from torch import nn
from torch.utils.data import TensorDataset

import partwise as pw


def make_model():
    torch.manual_seed(0)
    model = nn.Module()
    model.encoder = nn.Sequential(nn.Linear(6, 32), nn.BatchNorm1d(32), nn.ReLU())
    model.decoder = nn.Linear(32, 3)
    return model

def loss_fn(model, batch):
    return nn.functional.cross_entropy(model.decoder(model.encoder(batch[0])), batch[1])

x = torch.randn(600, 6, generator=torch.Generator().manual_seed(1))
y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
train_dataset, dev_dataset = TensorDataset(x[:500], y[:500]), TensorDataset(x[500:], y[500:])

plan = pw.Plan([
    pw.Phase("decoder only", epochs=2, train={"decoder": 1e-2}),                # encoder frozen
    pw.Phase("all", epochs=3, train={"decoder": 1e-2, "encoder": 1e-4},         # encoder joins at 1/100
             schedule=pw.LRSchedule(warmup=10, decay="cosine")),               # with its own warmup
])
model = make_model()
parts = pw.Parts(model)
print(plan.describe(parts, steps_per_epoch=8))   # dry run: trainable params, LR and WD per group
trainer = pw.Trainer(model, parts, plan, loss_fn, run_dir="runs/plan", batch_size=64)
trainer.fit(train_dataset, dev_dataset, max_steps=20)   # stops at step 20 with a checkpoint, as a kill would

resumed = make_model()
trainer = pw.Trainer(resumed, pw.Parts(resumed), plan, loss_fn, run_dir="runs/plan", batch_size=64)
history = trainer.fit(train_dataset, dev_dataset, resume="runs/plan")   # continues at step 20, in phase "all"
print(trainer.stop_reason, round(history[-1]["dev_loss"], 4))

uninterrupted = make_model()
pw.Trainer(uninterrupted, pw.Parts(uninterrupted), plan, loss_fn, batch_size=64).fit(train_dataset, dev_dataset)
pairs = zip(resumed.state_dict().values(), uninterrupted.state_dict().values(), strict=True)
print(all(torch.equal(a, b) for a, b in pairs))   # True: bit-identical
