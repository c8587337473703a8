r"""Amortized guide families q(z|x).

A guide family maps the encoder's features h(x) (shape ``(*batch, features)``) to a distribution
over ``z`` with batch shape ``batch`` and event shape ``(latent_dim,)``. Variants choose one by
name (``guide="fullcov"``) instead of defining a new model class.

- ``"diagonal"``: q(z|x) = N(mu(x), diag sigma(x)^2), sigma = softplus(.) + 1e-4.
- ``"fullcov"``: q(z|x) = N(mu(x), L(x) L(x)^T) with L lower triangular: softplus diagonal
  (+1e-4) and a free strictly lower part. log det Cov = 2 sum_i log L_ii, so the density costs
  O(D^2) and sampling z = mu + L eps stays reparameterized.
- ``"lowrank"``: q(z|x) = N(mu(x), F(x) F(x)^T + diag d(x)) with F of shape (D, rank).
- ``"iaf"``: a diagonal base eps ~ N(mu(x), sigma(x)^2) pushed through ``flow_steps``
  inverse-autoregressive affine steps (Kingma et al. 2016) conditioned on h(x):
  z_t = s_t(z_{t-1}, h) * z_{t-1} + (1 - s_t) m_t(z_{t-1}, h) with s_t a sigmoid gate, so
  log q(z|x) = log N(eps) - sum_t sum_i log s_{t,i} (Pyro's stable ``AffineAutoregressive``).

The multivariate families produce a ``MultivariateNormal``-type distribution whose event shape is
already (D,): never ``.to_event`` it (that would break the data plate). Their models should write
the prior as an MVN too, so that ``TraceMeanField_ELBO`` finds a closed-form KL
(`multivariate` says which families need that).
"""

from __future__ import annotations

import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from pyro.nn import ConditionalAutoRegressiveNN
from torch import nn
from torch.nn import functional as F

MIN_SCALE = 1e-4


class DiagonalNormal(nn.Module):
    """``h -> Normal(loc, scale).to_event(1)`` through one linear layer to (loc, raw scale)."""

    multivariate = False

    def __init__(self, features: int, latent_dim: int):
        super().__init__()
        self.latent_dim = latent_dim
        self.linear = nn.Linear(features, 2 * latent_dim)

    def forward(self, h):
        loc, raw = self.linear(h).chunk(2, dim=-1)
        return dist.Normal(loc, F.softplus(raw) + MIN_SCALE).to_event(1)


class FullCovNormal(nn.Module):
    """``h -> MultivariateNormal(loc, scale_tril=L)``: D means, D diagonal and D(D-1)/2 lower entries."""

    multivariate = True

    def __init__(self, features: int, latent_dim: int):
        super().__init__()
        D = self.latent_dim = latent_dim
        self.linear = nn.Linear(features, 2 * D + D * (D - 1) // 2)
        with torch.no_grad():  # start as a diagonal guide: the off-diagonal part learns from zero
            self.linear.weight[2 * D:].zero_()
            self.linear.bias[2 * D:].zero_()
        self.register_buffer("rows", torch.tril_indices(D, D, offset=-1)[0], persistent=False)
        self.register_buffer("cols", torch.tril_indices(D, D, offset=-1)[1], persistent=False)

    def forward(self, h):
        D = self.latent_dim
        out = self.linear(h)
        loc, raw_diag, lower = out[..., :D], out[..., D:2 * D], out[..., 2 * D:]
        strictly_lower = out.new_zeros(out.shape[:-1] + (D, D))
        strictly_lower[..., self.rows, self.cols] = lower
        L = strictly_lower + torch.diag_embed(F.softplus(raw_diag) + MIN_SCALE)
        return dist.MultivariateNormal(loc, scale_tril=L)


class LowRankNormal(nn.Module):
    """``h -> LowRankMultivariateNormal(loc, cov_factor (D x rank), cov_diag)``."""

    multivariate = True

    def __init__(self, features: int, latent_dim: int, rank: int = 2):
        super().__init__()
        if int(rank) != rank or rank < 1:
            raise ValueError(f"the low-rank guide's rank must be an integer >= 1, got {rank}")
        self.latent_dim, self.rank = latent_dim, int(rank)
        self.linear = nn.Linear(features, latent_dim * (2 + self.rank))

    def forward(self, h):
        D, r = self.latent_dim, self.rank
        out = self.linear(h)
        loc, raw_diag = out[..., :D], out[..., D:2 * D]
        factor = out[..., 2 * D:].reshape(out.shape[:-1] + (D, r))
        return dist.LowRankMultivariateNormal(loc, factor, F.softplus(raw_diag) + MIN_SCALE)


class IAFNormal(nn.Module):
    """A diagonal Normal base pushed through ``flow_steps`` conditional IAF steps (context: h)."""

    multivariate = False

    def __init__(self, features: int, latent_dim: int, flow_steps: int = 2, flow_hidden: int | None = None):
        super().__init__()
        if int(flow_steps) != flow_steps or flow_steps < 1:
            raise ValueError(f"the IAF guide's flow_steps must be an integer >= 1, got {flow_steps}")
        if latent_dim < 2:
            raise ValueError("the IAF guide needs latent_dim >= 2 (an autoregressive flow on one dim is affine)")
        self.latent_dim = latent_dim
        self.base = DiagonalNormal(features, latent_dim)
        hidden = flow_hidden or max(2 * latent_dim, 16)
        self.flows = nn.ModuleList(
            T.ConditionalAffineAutoregressive(
                ConditionalAutoRegressiveNN(latent_dim, features, [hidden],
                                            permutation=torch.arange(latent_dim).flip(0) if i % 2 else
                                            torch.arange(latent_dim)),
                stable=True)
            for i in range(int(flow_steps)))

    def forward(self, h):
        return dist.TransformedDistribution(self.base(h), [f.condition(h) for f in self.flows])


GUIDES = {"diagonal": DiagonalNormal, "fullcov": FullCovNormal, "lowrank": LowRankNormal, "iaf": IAFNormal}


def make_guide(name: str, features: int, latent_dim: int, **options) -> nn.Module:
    """The guide family called ``name`` on ``features`` encoder outputs.

    ``options``: ``rank`` (lowrank), ``flow_steps`` and ``flow_hidden`` (iaf).
    """
    if name not in GUIDES:
        raise ValueError(f"unknown guide family {name!r}; choose one of {sorted(GUIDES)}")
    allowed = {"lowrank": {"rank"}, "iaf": {"flow_steps", "flow_hidden"}}.get(name, set())
    options = {k: v for k, v in options.items() if v is not None}
    extra = set(options) - allowed
    if extra:
        raise ValueError(f"guide {name!r} takes no option {sorted(extra)[0]!r}")
    return GUIDES[name](features, latent_dim, **options)


def standard_normal(zeros: torch.Tensor, multivariate: bool):
    """N(0, I) over the last dim of ``zeros``: an MVN (for multivariate guides, so the KL is
    closed-form) or an independent Normal."""
    if multivariate:
        eye = torch.eye(zeros.shape[-1], device=zeros.device, dtype=zeros.dtype)
        return dist.MultivariateNormal(zeros, scale_tril=eye.expand(zeros.shape + zeros.shape[-1:]))
    return dist.Normal(zeros, 1.0).to_event(1)
