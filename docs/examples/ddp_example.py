"""The same Trainer under torchrun: one process per rank, DDP built and rebuilt by the plan."""
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import TensorDataset

import partwise as pw

torch.manual_seed(0)  # the same initial weights on every rank (DDP broadcasts rank 0's anyway)
model = nn.Module()
model.encoder = nn.Sequential(nn.Linear(6, 32), nn.Tanh())
model.decoder = nn.Linear(32, 3)
x = torch.randn(512, 6, generator=torch.Generator().manual_seed(1))
data = TensorDataset(x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long())
plan = pw.Plan([
    pw.Phase("decoder only", epochs=1, train={"decoder": 1e-2}),
    pw.Phase("all", epochs=2, train={"decoder": 1e-2, "encoder": 1e-3}),   # the DDP wrapper is rebuilt here
])

def loss_fn(model, batch):
    return nn.functional.cross_entropy(model.decoder(model.encoder(batch[0])), batch[1])

trainer = pw.Trainer(model, pw.Parts(model), plan, loss_fn, batch_size=64, run_dir="runs/ddp")  # the global batch
trainer.fit(data)
checksum = sum(p.double().sum().item() for p in model.parameters())
sums = [None] * trainer.world
dist.all_gather_object(sums, checksum)
if trainer.rank == 0:
    print(f"{trainer.world} ranks agree: {len(set(sums)) == 1}")
dist.barrier()  # every rank done before any tears the group down
dist.destroy_process_group()
