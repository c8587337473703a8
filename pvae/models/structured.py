r"""Structured output prediction with a conditional VAE (Sohn et al. 2015), framed as in Pyro's
CVAE tutorial: predict the hidden quadrants of an image from its visible ones.

Each image x is split by a fixed mask into a visible part v (the input) and a hidden part h
(the output to predict). For each datapoint n:

.. math:: z_n \sim p_\theta(z \mid v_n) = \mathcal N(\mu_\theta(v_n), \operatorname{diag}\sigma_\theta(v_n)^2),
          \qquad h_n \sim p_\theta(h \mid z_n, v_n)

and the guide (recognition net) sees the whole image: q_phi(z_n | v_n, h_n). The visible part
is conditioned on, never scored, so every pvae bound of this pair bounds the *conditional*
log-likelihood log p(h | v), and [`pvae.log_likelihood`][pvae.log_likelihood] estimates it by importance
sampling with z ~ q(z | v, h):

.. math:: \log p(h \mid v) \approx \operatorname{logsumexp}_i
          [\log p(h \mid z_i, v) + \log p(z_i \mid v) - \log q(z_i \mid v, h)] - \log k.

``latent_dim=0`` gives the deterministic baseline network of the tutorial: h ~ p(h | v) =
Bernoulli(f(v)), with no latent variable and an empty guide, whose log-likelihood is exact.
Since the decoder sees v as well as z, the CVAE contains the baseline (a decoder that ignores
z); what z adds is a multimodal p(h|v): one digit's half can continue in several ways.
"""

from __future__ import annotations

import math

import pyro
import torch

from pvae.models.base import PyroVAE
from pvae.nn.guides import DiagonalNormal
from pvae.nn.likelihoods import make_likelihood
from pvae.nn.nets import MLP
from pvae.util.validate import check_hidden, check_shape, check_size

#: visible quadrants (0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right) by how many are given
QUADRANTS = {1: (2,), 2: (2, 3), 3: (1, 2, 3)}


def quadrant_mask(height: int, width: int, visible) -> torch.Tensor:
    """Boolean (height, width) mask, True on the ``visible`` quadrants (indices as in `QUADRANTS`)."""
    mask = torch.zeros(height, width, dtype=torch.bool)
    for q in visible:
        if q not in (0, 1, 2, 3):
            raise ValueError(f"quadrants are numbered 0..3 (top-left, top-right, bottom-left, bottom-right), got {q}")
        r, c = divmod(q, 2)
        mask[r * (height // 2):(r + 1) * (height // 2) if r == 0 else height,
             c * (width // 2):(c + 1) * (width // 2) if c == 0 else width] = True
    return mask


class StructuredCVAE(PyroVAE):
    """p(z|v) p(h|z,v) with q(z|v,h) for image completion; ``latent_dim=0``: the baseline net.

    Args:
        x_shape: shape of one image; the last two dims (or a square of the values) are H, W.
        visible: how many quadrants are given (1, 2 or 3, see `QUADRANTS`) or a list of
            quadrant indices.
        latent_dim: D, the size of z; 0 for the deterministic baseline.
        hidden: widths of each net's hidden layers.
    """

    def __init__(self, x_shape=(784,), visible=1, latent_dim=32, hidden=(500, 500), activation="relu",
                 likelihood="bernoulli"):
        x_shape, hidden = check_shape("x_shape", x_shape), check_hidden(hidden)
        if isinstance(visible, int):
            if visible not in QUADRANTS:
                raise ValueError(f"visible must be 1, 2 or 3 quadrants (or a list of quadrant indices), got {visible}")
            visible = QUADRANTS[visible]
        visible = sorted(set(int(q) for q in visible))
        latent_dim, hidden = check_size("latent_dim", latent_dim, 0), check_hidden(hidden)
        numel = math.prod(x_shape)
        hw = x_shape[-2:] if len(x_shape) >= 2 else (math.isqrt(numel),) * 2
        if math.prod(hw) != math.prod(x_shape[-2:] if len(x_shape) >= 2 else x_shape):
            raise ValueError(f"x_shape {x_shape} is neither (..., H, W) nor a flat square image")
        super().__init__(x_shape=list(x_shape), visible=visible, latent_dim=int(latent_dim), hidden=list(hidden),
                         activation=activation, likelihood=likelihood)
        mask = quadrant_mask(*hw, visible).reshape(-1).repeat(numel // math.prod(hw))
        if bool(mask.all()) or not bool(mask.any()):
            raise ValueError(f"visible quadrants {visible} leave nothing to predict (or nothing to see)")
        self.x_shape, self.latent_dim = x_shape, int(latent_dim)
        self.register_buffer("visible_mask", mask, persistent=False)
        self.register_buffer("vis_idx", mask.nonzero()[:, 0], persistent=False)
        self.register_buffer("hid_idx", (~mask).nonzero()[:, 0], persistent=False)
        n_vis, n_hid, D = len(self.vis_idx), len(self.hid_idx), self.latent_dim
        self.likelihood = make_likelihood(likelihood, (n_hid,))
        self.decoder = MLP((D + n_vis,), hidden, (self.likelihood.num_params * n_hid,), activation)
        if D:
            self.prior_net = MLP((n_vis,), hidden, None, activation)
            self.prior_head = DiagonalNormal(hidden[-1], D)
            self.encoder = MLP((numel,), hidden, None, activation)
            self.q = DiagonalNormal(hidden[-1], D)

    def split(self, x):
        """(v, h): the visible and hidden values of each image, flattened."""
        x = x.reshape(x.shape[0], -1)
        return x[:, self.vis_idx], x[:, self.hid_idx]

    def prior(self, v):
        """p(z | v)."""
        return self.prior_head(self.prior_net(v))

    def decoder_params(self, z, v):
        vz = v if z is None else torch.cat([z, v.expand(z.shape[:-1] + v.shape[-1:])], -1)
        return self.decoder(vz).reshape(vz.shape[:-1] + (self.likelihood.num_params, len(self.hid_idx)))

    # -- p(z|v) p(h|z,v) and q(z|v,h) ----------------------------------------------------------------
    def model(self, x):
        self.register()
        v, h = self.split(x)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior(v)) if self.latent_dim else None
            return pyro.sample("x", self.likelihood(self.decoder_params(z, v)), obs=h)

    def guide(self, x):
        self.register()
        if self.latent_dim:
            with pyro.plate("data", x.shape[0]):
                return pyro.sample("z", self.q(self.encoder(x.reshape(x.shape[0], -1))))

    # -- what users call directly ----------------------------------------------------------------------
    @torch.no_grad()
    def complete(self, x, num_samples: int = 1, mean: bool = True):
        """Images whose hidden part is predicted from the visible part of ``x`` (the hidden values of
        ``x`` are never read): shape ``(num_samples, n, *x_shape)``, one z ~ p(z|v) per sample,
        with E[h|z,v] (``mean=True``) or a draw of h."""
        v, _ = self.split(x)
        z = self.prior(v).sample((num_samples,)) if self.latent_dim else None
        params = self.decoder_params(z, v)
        if z is None:
            params = params.expand((num_samples,) + params.shape)
        h = self.likelihood.mean(params) if mean else self.likelihood(params).sample()
        out = x.reshape(1, x.shape[0], -1).expand(num_samples, -1, -1).clone().to(h.dtype)
        out[..., self.hid_idx] = h
        return out.reshape((num_samples, x.shape[0]) + self.x_shape)

    @torch.no_grad()
    def reconstruct(self, x):
        """The completion with z at the posterior mean of q(z | v, h)."""
        v, _ = self.split(x)
        z = self.q(self.encoder(x.reshape(x.shape[0], -1))).mean if self.latent_dim else None
        out = x.reshape(x.shape[0], -1).clone()
        out[:, self.hid_idx] = self.likelihood.mean(self.decoder_params(z, v))
        return out.reshape(x.shape)
