"""A model/guide pair with a deterministic (point-mass) guide: one training step's gradient has
no randomness, so a data-parallel step can be compared with a single-process one exactly."""

import pyro
import pyro.distributions as dist
import torch
from torch import nn


class DeltaVAE(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.enc, self.dec = nn.Linear(6, 2), nn.Linear(2, 6)

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(self.dec(z), 1.0).to_event(1), obs=x)

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Delta(self.enc(x), event_dim=1))


def data():
    return torch.randn(10, 6, generator=torch.Generator().manual_seed(1))
