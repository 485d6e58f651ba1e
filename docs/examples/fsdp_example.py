"""FSDP2 under torchrun: the model sharded part by part, the encoder frozen, then unfrozen at 1/100."""
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import TensorDataset

import partwise as pw


def build() -> nn.Module:
    torch.manual_seed(0)  # the same initial weights on every rank
    model = nn.Module()
    model.encoder = nn.Sequential(nn.Linear(6, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh())
    model.decoder = nn.Linear(32, 3)
    return model

model = build()
x = torch.randn(512, 6, generator=torch.Generator().manual_seed(1))
data = TensorDataset(x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long())
plan = pw.Plan([
    pw.Phase("decoder only", epochs=1, train={"decoder": 1e-2}),
    pw.Phase("all", epochs=2, train={"decoder": 1e-2, "encoder": 1e-4}),
])

def loss_fn(model, batch):
    return nn.functional.cross_entropy(model.decoder(model.encoder(batch[0])), batch[1])

trainer = pw.Trainer(model, pw.Parts(model), plan, loss_fn, batch_size=64, run_dir="runs/fsdp",
                     distributed="fsdp2", fsdp_units=["encoder.0", "encoder.2"])  # each Linear of the encoder a unit
trainer.fit(data)
local = model.decoder.weight.to_local().shape  # this rank's shard
if trainer.rank == 0:
    print(f"rank 0 holds {tuple(local)} of decoder.weight {tuple(model.decoder.weight.shape)}")
    plain = build()  # a one-process model reads the whole weights rank 0 wrote, per part
    pw.load_part(plain, "decoder", pw.resolve_checkpoint("runs/fsdp"))
    print("whole decoder read back:", tuple(plain.decoder.weight.shape))
dist.barrier()
dist.destroy_process_group()
