"""Observation models p(x|z).

A likelihood turns the decoder's output into a distribution over one datapoint. The decoder
emits ``num_params`` numbers per value of ``x``, reshaped to ``(*batch, num_params, *x_shape)``;
the likelihood returns a distribution with batch shape ``batch`` and event shape ``x_shape``,
so ``log_prob`` sums over the pixels of each datapoint:

- ``"bernoulli"``: x_i ~ Bernoulli(sigmoid(logit_i)). For grey values in [0, 1] the log-prob is
  the (negative) binary cross-entropy, the usual choice for MNIST-like data.
- ``"gaussian"``: x_i ~ N(mu_i, sigma_i^2), with sigma a learned per-value parameter, or fixed
  (``scale=0.1``, say).
- ``"continuous-bernoulli"``: the normalised [0, 1] density of Loaiza-Ganem & Cunningham
  (2019), p(x|l) = C(l) l^x (1-l)^(1-x).
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from torch import nn
from torch.distributions import constraints
from torch.nn import functional as F


class Likelihood(nn.Module):
    """Base class: ``forward(params) -> Distribution`` with event shape ``x_shape``."""

    num_params = 1
    name = "likelihood"
    #: the [low, high] range the data must lie in (None: any real value)
    support = None

    def __init__(self, x_shape):
        super().__init__()
        self.x_shape = tuple(x_shape)

    def split(self, out):
        """``(*batch, num_params, *x_shape) -> num_params`` tensors of shape ``(*batch, *x_shape)``."""
        return out.unbind(-len(self.x_shape) - 1)

    def forward(self, out) -> dist.Distribution:  # pragma: no cover - abstract
        raise NotImplementedError

    def mean(self, out) -> torch.Tensor:
        """E[x | z] for the decoder output ``out``."""
        return self(out).mean

    def value_log_prob(self, out, x) -> torch.Tensor:
        """log p(x_i | z) of every value, shape ``(*batch, *x_shape)`` (for masks: inpainting)."""
        return self(out).base_dist.log_prob(x)  # an Independent distribution over x's values


class BernoulliImage(dist.TorchDistribution):
    """Independent Bernoulli(sigmoid(logits)) over the last ``event_dim`` dims, in one fused pass:
    log p(x) = -sum BCE(logits, x), the sum taken before the sign flip (Pyro's
    ``Bernoulli(...).to_event`` negates the full (k, batch, *x_shape) tensor first). Grey values
    in [0, 1] are allowed: then it is the negative binary cross-entropy."""

    arg_constraints = {"logits": constraints.real}
    support = constraints.unit_interval
    has_rsample = False

    def __init__(self, logits, event_dim: int, validate_args=None):
        self.logits = logits
        shape = logits.shape
        super().__init__(shape[: len(shape) - event_dim], shape[len(shape) - event_dim:], validate_args=False)

    def expand(self, batch_shape, _instance=None):
        return BernoulliImage(self.logits.expand(tuple(batch_shape) + self.event_shape), self.event_dim)

    @property
    def mean(self):
        return torch.sigmoid(self.logits)

    def sample(self, sample_shape=torch.Size()):
        with torch.no_grad():
            p = torch.sigmoid(self.logits.expand(self._extended_shape(sample_shape)))
            return torch.bernoulli(p)

    def _cross_entropy(self, value):
        logits, value = torch.broadcast_tensors(self.logits, value)
        return F.binary_cross_entropy_with_logits(logits, value, reduction="none")

    def value_log_prob(self, value):
        """Per-value log-probabilities, before the sum over the event dims."""
        return -self._cross_entropy(value)

    def log_prob(self, value):
        return -self._cross_entropy(value).sum(tuple(range(-self.event_dim, 0)))


class Bernoulli(Likelihood):
    name = "bernoulli"
    support = (0.0, 1.0)

    def forward(self, out):
        (logits,) = self.split(out)
        return BernoulliImage(logits, len(self.x_shape))

    def mean(self, out):
        return torch.sigmoid(self.split(out)[0])

    def value_log_prob(self, out, x):
        return self(out).value_log_prob(x)


class ContinuousBernoulli(Likelihood):
    name = "continuous-bernoulli"
    support = (0.0, 1.0)

    def forward(self, out):
        (logits,) = self.split(out)
        logits = logits.clamp(-30.0, 30.0)
        return dist.ContinuousBernoulli(logits=logits).to_event(len(self.x_shape))


class Gaussian(Likelihood):
    """N(mu, sigma^2) per value; ``scale=None`` learns one sigma per value (softplus, >= 1e-3)."""

    name = "gaussian"

    def __init__(self, x_shape, scale: float | None = None):
        super().__init__(x_shape)
        self.fixed_scale = scale
        if scale is None:
            # softplus^-1(1) so sigma starts at 1
            self.raw_scale = nn.Parameter(torch.full(self.x_shape, math.log(math.e - 1.0)))
        elif not scale > 0:
            raise ValueError(f"the Gaussian likelihood's scale must be > 0, got {scale}")

    def scale(self):
        if self.fixed_scale is not None:
            return self.fixed_scale
        return F.softplus(self.raw_scale) + 1e-3

    def forward(self, out):
        (loc,) = self.split(out)
        return dist.Normal(loc, self.scale()).to_event(len(self.x_shape))

    def mean(self, out):
        return self.split(out)[0]


LIKELIHOODS = {c.name: c for c in (Bernoulli, Gaussian, ContinuousBernoulli)}


def make_likelihood(name: str, x_shape, scale: float | None = None) -> Likelihood:
    """The likelihood called ``name`` for data of shape ``x_shape``."""
    if name not in LIKELIHOODS:
        raise ValueError(f"unknown likelihood {name!r}; choose one of {sorted(LIKELIHOODS)}")
    if name == "gaussian":
        return Gaussian(x_shape, scale)
    if scale is not None:
        raise ValueError(f"likelihood_scale only applies to the gaussian likelihood, not {name!r}")
    return LIKELIHOODS[name](x_shape)
