r"""VQ-VAE (van den Oord et al. 2017) as a Pyro model/guide pair.

The encoder maps x to z_e(x); the guide quantises it to the nearest of K codebook vectors,

.. math:: k^*(x) = \arg\min_k \lVert z_e(x) - e_k \rVert, \qquad z_q = e_{k^*},

and returns a point mass at z_q whose gradient passes straight through to z_e
(z_q = z_e + sg(e_{k*} - z_e)). The point mass carries the codebook and commitment losses as its
log-density, log q = w (||sg(z_e) - e||^2 + beta_c ||z_e - sg(e)||^2), so the ELBO that pvae's
trainer maximises is

.. math:: \log p(x \mid z_q) - w \lVert \mathrm{sg}(z_e) - e \rVert^2 - w \beta_c \lVert z_e - \mathrm{sg}(e) \rVert^2

with beta_c = ``commitment`` (default 5) and a weight w (``vq_weight``, default 1). The paper's
beta_c = 0.25 pairs with a mean squared error, while log p(x|z) here is a sum over every value of
x (784 for MNIST-sized images): with 0.25 the reconstruction gradient drags z_e away from the
codebook faster than the codes follow (measured on 2,000 embedded images, 8 epochs: the loss
climbs from 829 to 5,453 and 6 of 64 codes stay in use; with beta_c = 5 it falls from 522 to
394 and 21 codes are used). The prior, uniform over the K codes, adds the constant -log K, left
out. Every site sits in the data plate, as the house rule asks.

Each datapoint gets ``num_latents`` codes (a row of L positions, z of shape (L, code_dim)), so
that a generative model of images is a prior over code rows: the uniform prior generates noise,
a learned autoregressive prior p(c) = prod_i p(c_i | c_<i) generates images
([`pvae.nn.code_prior`][pvae.nn.code_prior]: ``pvae.fit_code_prior(vqvae, data)``, then ``vqvae.sample(n)``).
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pvae.models.base import PyroVAE
from pvae.nn.likelihoods import make_likelihood
from pvae.nn.nets import MLP
from pvae.util.validate import check_hidden, check_number, check_shape, check_size


class VQVAE(PyroVAE):
    """An MLP VQ-VAE: ``num_latents`` codes of ``code_dim`` per datapoint from a codebook of
    ``num_codes``; ``code_prior`` (set by [`pvae.fit_code_prior`][pvae.training.code_prior.fit_code_prior]) makes it generative."""

    point_mass = True  # a Delta guide: no density to importance-sample log p(x) with

    def __init__(self, x_shape=(784,), num_codes=64, code_dim=16, hidden=(256,), activation="relu",
                 likelihood="bernoulli", commitment=5.0, vq_weight=1.0, likelihood_scale=None, num_latents=4,
                 code_prior=None):
        x_shape, hidden = check_shape("x_shape", x_shape), check_hidden(hidden)
        num_codes, code_dim = check_size("num_codes", num_codes), check_size("code_dim", code_dim)
        num_latents = check_size("num_latents", num_latents)
        commitment = check_number("commitment", commitment, low=0)
        vq_weight = check_number("vq_weight", vq_weight, low=0, open_low=True)
        super().__init__(x_shape=list(x_shape), num_codes=int(num_codes), code_dim=int(code_dim), hidden=list(hidden),
                         activation=activation, likelihood=likelihood, commitment=float(commitment),
                         vq_weight=float(vq_weight), likelihood_scale=likelihood_scale, num_latents=num_latents,
                         code_prior=code_prior)
        self.x_shape, self.code_dim, self.commitment = x_shape, int(code_dim), float(commitment)
        self.num_latents, self.num_codes = num_latents, num_codes
        self.vq_weight = float(vq_weight)
        self.likelihood = make_likelihood(likelihood, x_shape, likelihood_scale)
        self.encoder = MLP(x_shape, hidden, (num_latents, code_dim), activation)
        self.decoder = MLP((num_latents * code_dim,), hidden[::-1], (self.likelihood.num_params * math.prod(x_shape),),
                           activation)
        self.codebook = nn.Parameter(torch.randn(num_codes, code_dim) / math.sqrt(code_dim))
        self.code_prior = None
        if code_prior is not None:  # a fitted prior's settings, stored in the config: rebuilt, then loaded
            from pvae.nn.code_prior import CodePrior

            self.code_prior = CodePrior(num_latents, num_codes, **code_prior)

    @property
    def can_sample(self) -> bool:
        return self.code_prior is not None

    def nearest(self, z_e):
        """Index of the nearest codebook vector for each row of z_e (any leading dims)."""
        d = (z_e.unsqueeze(-2) - self.codebook).pow(2).sum(-1)
        return d.argmin(-1)

    def _decoder_params(self, z):
        """(*batch, L, code_dim) codes -> the likelihood's parameters (*batch, P, *x_shape)."""
        out = self.decoder(z.flatten(-2))
        return out.reshape(z.shape[:-2] + (self.likelihood.num_params,) + self.x_shape)

    def model(self, x=None, n=None):
        self.register()
        n = x.shape[0] if x is not None else n
        with pyro.plate("data", n):
            z = pyro.sample("z", dist.ImproperUniform(dist.constraints.real, (n,),
                                                      (self.num_latents, self.code_dim)))
            return pyro.sample("x", self.likelihood(self._decoder_params(z)), obs=x)

    def guide(self, x, n=None):
        self.register()
        z_e = self.encoder(x)
        e = self.codebook[self.nearest(z_e)]
        codebook_loss = (z_e.detach() - e).pow(2).sum((-2, -1))
        commitment_loss = (z_e - e.detach()).pow(2).sum((-2, -1))
        z_q = z_e + (e - z_e).detach()  # straight-through: value e, gradient to z_e
        with pyro.plate("data", x.shape[0]):
            vq_loss = self.vq_weight * (codebook_loss + self.commitment * commitment_loss)
            return pyro.sample("z", dist.Delta(z_q, log_density=vq_loss, event_dim=2))

    @torch.no_grad()
    def encode(self, x):
        """The code indices of each datapoint, shape ``(n, num_latents)``."""
        return self.nearest(self.encoder(x))

    @torch.no_grad()
    def decode(self, codes):
        """E[x | z = e_codes] for integer codes of shape ``(n, num_latents)``."""
        return self.likelihood.mean(self._decoder_params(self.codebook[codes]))

    @torch.no_grad()
    def sample(self, n: int, mean: bool = True):
        """n new datapoints: codes c ~ p(c) from the learned code prior, decoded (E[x|c], or a
        draw of x with ``mean=False``)."""
        if self.code_prior is None:
            raise ValueError("this VQ-VAE has no learned code prior (its codes are uniform, which generates noise): "
                             "fit one with pvae.fit_code_prior(model, data), or train with pvae train --model vqvae")
        codes = self.code_prior.sample(n)
        params = self._decoder_params(self.codebook[codes])
        return self.likelihood.mean(params) if mean else self.likelihood(params).sample()

    @torch.no_grad()
    def reconstruct(self, x):
        return self.decode(self.encode(x))
