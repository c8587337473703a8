r"""Autoencoders as Pyro model/guide pairs: a point-mass guide.

With q(z|x) = delta(z - f(x)) the ELBO's entropy term vanishes and

.. math:: \mathcal L(x) = \log p(x \mid z{=}f(x)) + \log p(z{=}f(x)),

so with a flat (improper) prior (``prior="flat"``) training maximises the reconstruction
log-likelihood alone: the plain autoencoder (squared error for a fixed-scale Gaussian likelihood,
cross-entropy for a Bernoulli one). ``prior="normal"`` adds log N(f(x); 0, I): a MAP-regularised
code. ``noise`` makes it a denoising autoencoder (Vincent et al. 2008): in training, the guide
encodes a corrupted x (each value zeroed with probability ``noise``) while the model scores the
clean one. With ``activation="identity"`` and a Gaussian likelihood the learned decoder spans the
top principal subspace of the data (Baldi & Hornik 1989).

A point mass has no density to importance-sample with, so log p(x) estimates do not apply: use
the reconstruction term (``pvae.evaluate(...)["recon"]``).
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch

from pvae.models.base import PyroVAE
from pvae.nn.likelihoods import make_likelihood
from pvae.nn.nets import MLP
from pvae.util.validate import check_hidden, check_number, check_shape, check_size


class AE(PyroVAE):
    """x -> z = f(x) -> p(x|z); ``hidden=()`` gives single linear layers each way."""

    point_mass = True  # a Delta guide: no density to importance-sample log p(x) with

    def __init__(self, x_shape=(784,), latent_dim=32, hidden=(256,), activation="relu", likelihood="bernoulli",
                 prior="flat", noise=0.0, likelihood_scale=None):
        x_shape, hidden = check_shape("x_shape", x_shape), check_hidden(hidden, allow_empty=True)
        latent_dim = check_size("latent_dim", latent_dim)
        if prior not in ("flat", "normal"):
            raise ValueError(f"unknown prior {prior!r}; choose 'flat' or 'normal'")
        if not 0.0 <= check_number("noise", noise) < 1.0:
            raise ValueError(f"noise (the masking probability of the denoising AE) must lie in [0, 1), got {noise}")
        super().__init__(x_shape=list(x_shape), latent_dim=int(latent_dim), hidden=list(hidden), activation=activation,
                         likelihood=likelihood, prior=prior, noise=float(noise), likelihood_scale=likelihood_scale)
        self.x_shape, self.latent_dim, self.prior_kind, self.noise = x_shape, int(latent_dim), prior, float(noise)
        self.likelihood = make_likelihood(likelihood, x_shape, likelihood_scale)
        self.encoder = MLP(x_shape, hidden, (latent_dim,), activation)
        self.decoder = MLP((latent_dim,), hidden[::-1], (self.likelihood.num_params * math.prod(x_shape),), activation)
        self.register_buffer("_zero", torch.zeros(()), persistent=False)

    def prior(self, n: int):
        zeros = self._zero.expand(n, self.latent_dim)
        if self.prior_kind == "normal":
            return dist.Normal(zeros, 1.0).to_event(1)
        return dist.ImproperUniform(dist.constraints.real, (n,), (self.latent_dim,))

    def decoder_params(self, z):
        return self.decoder(z).reshape(z.shape[:-1] + (self.likelihood.num_params,) + self.x_shape)

    def model(self, x=None, n=None):
        self.register()
        n = x.shape[0] if x is not None else n
        with pyro.plate("data", n):
            z = pyro.sample("z", self.prior(n))
            return pyro.sample("x", self.likelihood(self.decoder_params(z)), obs=x)

    def guide(self, x, n=None):
        self.register()
        if self.training and self.noise > 0:  # denoising: encode a corrupted copy
            x = x * (torch.rand_like(x) >= self.noise)
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("z", dist.Delta(self.encoder(x), event_dim=1))

    @torch.no_grad()
    def encode(self, x):
        """The code f(x) (decode and reconstruct come from PyroVAE)."""
        return self.encoder(x)

