import torch
from torch import nn

import partwise as pw

torch.manual_seed(0)
model = nn.Module()
model.encoder = nn.Sequential(nn.Embedding(100, 32), nn.LayerNorm(32))
model.decoder = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 100))
parts = pw.Parts(model)                     # parts: encoder, decoder (the top-level children)

opt = pw.build_optimizer(parts, default={"name": "adamw", "lr": 1e-3, "weight_decay": 0.01},
                         per_part={"encoder": {"lr": 1e-4}})
for group in opt.param_groups:              # a group per part, and per decayed / not-decayed parameters
    print(group["part"], group["lr"], group["weight_decay"], len(group["params"]))
pw.check_optimizer(opt, parts)              # every trainable parameter in exactly one group, by identity

opts = pw.build_optimizer(parts, per_part={"encoder": {"name": "sgd", "lr": 0.1, "momentum": 0.9}},
                          separate=True)    # one optimizer per part, each of its own class
print(opts)                                 # OptimizerSet(encoder=SGD, decoder=AdamW)

tokens = torch.randint(0, 100, (16,))
loss = nn.functional.cross_entropy(model.decoder(model.encoder(tokens)), tokens)
loss.backward()
opts.step()
opts.zero_grad()
saved = opts.state_dict()                   # keyed by part and parameter name, with shapes and classes

parts.freeze("encoder")                     # its state is dropped: a frozen part holds no optimizer state
print(pw.state_bytes(opts, parts))
parts.unfreeze("encoder")
again = pw.build_optimizer(parts, per_part={"encoder": {"name": "sgd", "lr": 0.1, "momentum": 0.9}},
                           separate=True)
again.load_state_dict(saved)                # loads into the rebuilt optimizers, parameter by name
print(pw.state_bytes(again, parts))
