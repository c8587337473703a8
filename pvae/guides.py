"""Amortized guide families q(z|x).

A guide family maps the encoder's features h(x) (shape ``(*batch, features)``) to a distribution
over ``z`` with batch shape ``batch`` and event shape ``(latent_dim,)``. Variants choose one by
name (``guide="diagonal"``) instead of defining a new model class.

- ``"diagonal"``: q(z|x) = N(mu(x), diag(sigma(x)^2)), sigma = softplus(.) + 1e-4.
"""

from __future__ import annotations

import pyro.distributions as dist
from torch import nn
from torch.nn import functional as F


class DiagonalNormal(nn.Module):
    """``h -> Normal(loc, scale).to_event(1)`` through one linear layer to (loc, raw scale)."""

    def __init__(self, features: int, latent_dim: int):
        super().__init__()
        self.latent_dim = latent_dim
        self.linear = nn.Linear(features, 2 * latent_dim)

    def forward(self, h):
        loc, raw = self.linear(h).chunk(2, dim=-1)
        return dist.Normal(loc, F.softplus(raw) + 1e-4).to_event(1)


GUIDES = {"diagonal": DiagonalNormal}


def make_guide(name: str, features: int, latent_dim: int) -> nn.Module:
    """The guide family called ``name`` on ``features`` encoder outputs."""
    if name not in GUIDES:
        raise ValueError(f"unknown guide family {name!r}; choose one of {sorted(GUIDES)}")
    return GUIDES[name](features, latent_dim)
