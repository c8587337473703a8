r"""The conditional VAE (Sohn et al. 2015; Kingma et al. 2014, M1+label) as a Pyro model/guide pair.

For each datapoint n with label y_n (one of C classes, one-hot e_y):

.. math:: z_n \sim p(z \mid y_n), \qquad x_n \sim p_\theta(x \mid z_n, y_n), \qquad
          q_\phi(z_n \mid x_n, y_n) = \mathcal N(\mu_\phi(x_n, e_{y_n}), \operatorname{diag}\sigma_\phi(\cdot)^2)

with p(z|y) = N(0, I) (``prior="standard"``) or a learned Gaussian per class (``"learned"``).
The decoder sees [z, e_y], the encoder [x, e_y]. ``model(x, y)`` and ``guide(x, y)`` take the
labels as their second argument; pvae's trainer and evaluator pass them (``needs_labels``), and
every objective then bounds log p(x | y).
"""

from __future__ import annotations

import math

import pyro
import torch
from pyro import poutine
from torch.nn import functional as F

from pvae.models.base import PyroVAE
from pvae.nn.guides import DiagonalNormal, make_guide, standard_normal
from pvae.nn.likelihoods import make_likelihood
from pvae.nn.nets import MLP
from pvae.util.validate import check_hidden, check_number, check_shape, check_size


class ConditionalVAE(PyroVAE):
    """p(z|y) p(x|z,y) with q(z|x,y); MLP nets; labels as integers or one-hot rows."""

    needs_labels = True

    def __init__(self, x_shape=(784,), num_classes=10, latent_dim=20, hidden=(400,), activation="relu",
                 likelihood="bernoulli", guide="diagonal", prior="standard", beta=1.0, likelihood_scale=None,
                 rank=None, flow_steps=None):
        x_shape, hidden = check_shape("x_shape", x_shape), check_hidden(hidden)
        num_classes, latent_dim = check_size("num_classes", num_classes, 2), check_size("latent_dim", latent_dim)
        hidden = check_hidden(hidden)
        if prior not in ("standard", "learned"):
            raise ValueError(f"unknown prior {prior!r}; choose 'standard' or 'learned'")
        beta = check_number("beta", beta, low=0, open_low=True)
        super().__init__(x_shape=list(x_shape), num_classes=int(num_classes), latent_dim=int(latent_dim),
                         hidden=list(hidden), activation=activation, likelihood=likelihood, guide=guide, prior=prior,
                         beta=float(beta), likelihood_scale=likelihood_scale, rank=rank, flow_steps=flow_steps)
        self.x_shape, self.num_classes, self.latent_dim, self.beta = x_shape, int(num_classes), int(latent_dim), beta
        C, D, numel = self.num_classes, self.latent_dim, math.prod(x_shape)
        self.likelihood = make_likelihood(likelihood, x_shape, likelihood_scale)
        self.encoder = MLP((numel + C,), hidden, None, activation)
        self.q = make_guide(guide, hidden[-1], D, rank=rank, flow_steps=flow_steps)
        self.decoder = MLP((D + C,), hidden[::-1], (self.likelihood.num_params * numel,), activation)
        self.class_prior = DiagonalNormal(C, D) if prior == "learned" else None
        if self.class_prior is not None and self.q.multivariate:
            raise ValueError("a learned class prior is diagonal: use it with guide='diagonal' or 'iaf'")
        self.register_buffer("_zero", torch.zeros(()), persistent=False)

    def one_hot(self, y):
        """Integer labels -> one-hot float rows (one-hot rows pass through)."""
        y = torch.as_tensor(y, device=self._zero.device)
        return F.one_hot(y.long(), self.num_classes).to(self._zero.dtype) if y.dim() == 1 else y.to(self._zero.dtype)

    def prior(self, e):
        """p(z|y) for one-hot rows ``e``."""
        if self.class_prior is None:
            return standard_normal(self._zero.expand(e.shape[0], self.latent_dim), self.q.multivariate)
        return self.class_prior(e)

    def decoder_params(self, z, e):
        ze = torch.cat([z, e.expand(z.shape[:-1] + e.shape[-1:])], -1)  # labels broadcast over particles
        return self.decoder(ze).reshape(z.shape[:-1] + (self.likelihood.num_params,) + self.x_shape)

    # -- p(z|y) p(x|z,y) and q(z|x,y) -------------------------------------------------------------------
    def model(self, x=None, y=None, n=None):
        self.register()
        e = self.one_hot(y)
        with pyro.plate("data", e.shape[0]):
            with poutine.scale(scale=self.beta):
                z = pyro.sample("z", self.prior(e))
            return pyro.sample("x", self.likelihood(self.decoder_params(z, e)), obs=x)

    def guide(self, x, y=None, n=None):
        self.register()
        e = self.one_hot(y)
        h = self.encoder(torch.cat([x.reshape(x.shape[0], -1), e], -1))
        with pyro.plate("data", x.shape[0]):
            with poutine.scale(scale=self.beta):
                return pyro.sample("z", self.q(h))

    # -- what users call directly -------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, x, y):
        """E_q[z|x,y]."""
        return self.q(self.encoder(torch.cat([x.reshape(x.shape[0], -1), self.one_hot(y)], -1))).mean

    @torch.no_grad()
    def decode(self, z, y):
        """E[x|z,y]."""
        return self.likelihood.mean(self.decoder_params(z, self.one_hot(y)))

    @torch.no_grad()
    def reconstruct(self, x, y):
        return self.decode(self.encode(x, y), y)

    @torch.no_grad()
    def sample(self, n: int, y=None, mean: bool = True):
        """n datapoints of class ``y`` (an int, or one label per datapoint; default: classes in turn)."""
        y = torch.arange(n) % self.num_classes if y is None else torch.as_tensor(y)
        e = self.one_hot(y.expand(n) if y.dim() == 0 else y)
        z = self.prior(e).sample()
        params = self.decoder_params(z, e)
        return self.likelihood.mean(params) if mean else self.likelihood(params).sample()
