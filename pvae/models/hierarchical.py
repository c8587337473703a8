r"""A VAE with L >= 2 stochastic layers (Burda et al. 2016; Sønderby et al. 2016).

Generative model (``model``), for each datapoint of the data plate:

.. math:: z_L \sim \mathcal N(0, I), \quad z_l \sim p(z_l \mid z_{l+1}) = \mathcal N(\mu_l(z_{l+1}),
          \operatorname{diag}\sigma_l(z_{l+1})^2), \quad x \sim p(x \mid z_1).

Inference (``guide``), two shapes:

- ``inference="bottom-up"``: q(z_1|x) q(z_2|z_1) ... q(z_L|z_{L-1}), each factor any guide
  family (``guide="diagonal" | "fullcov" | "lowrank" | "iaf"``). Its latents depend on each other
  in the opposite order to the model's, so ``mf-elbo`` (TraceMeanField_ELBO) is not valid for it.
- ``inference="ladder"``: a deterministic bottom-up pass d_1 = f_1(x), d_l = f_l(d_{l-1}), then
  top-down q(z_L|x) q(z_{L-1}|z_L, x) ..., each posterior the precision-weighted combination of
  the generative prior p(z_l|z_{l+1}) (shared with the model) and a Gaussian read off d_l:
  sigma^-2 = sigma_d^-2 + sigma_p^-2, mu = sigma^2 (mu_d sigma_d^-2 + mu_p sigma_p^-2).

Sites are named ``z1`` (next to x) ... ``zL``; every one sits in the data plate, so every
objective of the registry applies. ``beta`` (one value or one per layer) scales each layer's
latent sites in model and guide.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn

from pvae.models.base import PyroVAE
from pvae.nn.guides import DiagonalNormal, make_guide
from pvae.nn.likelihoods import make_likelihood
from pvae.nn.nets import MLP
from pvae.nn.priors import make_prior
from pvae.util.validate import check_hidden, check_number, check_shape, check_size


class HierarchicalVAE(PyroVAE):
    """L stochastic layers; ``latent_dims[l]`` and ``hidden[l]`` belong to layer l+1 (z1 first).

    The IWAE paper's two-layer net is ``latent_dims=(100, 50), hidden=((200, 200), (100, 100))``:
    x -200-200- z1(100) -100-100- z2(50), mirrored by the generative side. ``prior`` chooses the
    top layer's p(z_L) as for [`pvae.VAE`][pvae.VAE] (``"vamp"``: the guide's q(z_L | ...) along
    its mean path from the pseudo-inputs).
    """

    def __init__(self, x_shape=(784,), latent_dims=(100, 50), hidden=((200, 200), (100, 100)), activation="tanh",
                 likelihood="bernoulli", guide="diagonal", inference="bottom-up", beta=1.0, likelihood_scale=None,
                 rank=None, flow_steps=None, prior="standard", prior_components=None, prior_flow_steps=None):
        x_shape, dims = check_shape("x_shape", x_shape), tuple(check_size("latent_dims", d) for d in latent_dims)
        hidden = tuple(check_hidden(h) for h in hidden)
        L = len(dims)
        betas = ([check_number("beta", b, low=0, open_low=True) for b in beta] if isinstance(beta, (list, tuple))
                 else [check_number("beta", beta, low=0, open_low=True)] * L)
        if L < 2 or min(dims) < 1:
            raise ValueError(f"latent_dims must list >= 2 positive sizes (z1 first), got {dims}")
        if len(hidden) != L or any(not h or min(h) < 1 for h in hidden):
            raise ValueError(f"hidden must give one non-empty tuple of positive widths per layer ({L}), got {hidden}")
        if len(betas) != L or min(betas) <= 0:
            raise ValueError(f"beta must be > 0, one value or one per layer ({L}), got {beta}")
        if inference not in ("bottom-up", "ladder"):
            raise ValueError(f"unknown inference {inference!r}; choose 'bottom-up' or 'ladder'")
        if inference == "ladder" and guide != "diagonal":
            raise ValueError("ladder inference combines Gaussians by precision: it needs guide='diagonal'")
        super().__init__(x_shape=list(x_shape), latent_dims=list(dims), hidden=[list(h) for h in hidden],
                         activation=activation, likelihood=likelihood, guide=guide, inference=inference,
                         beta=betas if isinstance(beta, (list, tuple)) else betas[0],
                         likelihood_scale=likelihood_scale, rank=rank, flow_steps=flow_steps, prior=prior,
                         prior_components=prior_components, prior_flow_steps=prior_flow_steps)
        self.x_shape, self.latent_dims, self.betas, self.inference = x_shape, dims, betas, inference
        self.mean_field_valid = inference == "ladder"
        self.likelihood = make_likelihood(likelihood, x_shape, likelihood_scale)
        P = self.likelihood.num_params
        # generative side: p(x|z1) and p(z_l|z_{l+1}) for l = 1..L-1
        self.x_decoder = MLP((dims[0],), hidden[0][::-1], (P * math.prod(x_shape),), activation)
        self.priors = nn.ModuleList(
            nn.Sequential(MLP((dims[l + 1],), hidden[l + 1][::-1], None, activation),
                          DiagonalNormal(hidden[l + 1][0], dims[l]))
            for l in range(L - 1))
        # inference side: bottom-up nets on x, then on z_l (bottom-up) or on d_l (ladder)
        inputs = [x_shape] + [((dims[l - 1],) if inference == "bottom-up" else (hidden[l - 1][-1],)) for l in range(1, L)]
        self.encoders = nn.ModuleList(MLP(inputs[l], hidden[l], None, activation) for l in range(L))
        options = dict(rank=rank, flow_steps=flow_steps)
        if inference == "bottom-up":
            self.q_heads = nn.ModuleList(make_guide(guide, hidden[l][-1], dims[l], **options) for l in range(L))
        else:
            self.q_heads = nn.ModuleList(DiagonalNormal(hidden[l][-1], dims[l]) for l in range(L))
        self.multivariate = self.q_heads[-1].multivariate
        if prior == "vamp" and guide == "iaf":
            raise ValueError("the VampPrior is a mixture of the guide at pseudo-inputs, and the iaf guide has no "
                             "batched density for one: use guide='diagonal', 'fullcov' or 'lowrank'")
        self.p = make_prior(prior, dims[-1], multivariate=self.multivariate, components=prior_components,
                            flow_steps=prior_flow_steps, x_shape=x_shape,
                            unit_interval=self.likelihood.support == (0.0, 1.0))
        self.register_buffer("_zero", torch.zeros(()), persistent=False)

    def top_posterior(self, u):
        """q(z_L | u) along the guide's mean path (the VampPrior's components at pseudo-inputs u)."""
        h = u
        if self.inference == "ladder":
            for enc in self.encoders:
                h = enc(h)
            return self.q_heads[-1](h)
        for l in range(len(self.latent_dims) - 1):
            h = self.q_heads[l](self.encoders[l](h)).mean
        return self.q_heads[-1](self.encoders[-1](h))

    # -- p(z_L) p(z_{L-1}|z_L) ... p(x|z_1) ----------------------------------------------------------
    def model(self, x=None, n=None):
        self.register()
        n = x.shape[0] if x is not None else n
        L = len(self.latent_dims)
        with pyro.plate("data", n):
            with poutine.scale(scale=self.betas[-1]):
                z = pyro.sample(f"z{L}", self.p(self._zero.expand(n, self.latent_dims[-1]), posterior=self.top_posterior))
            for l in reversed(range(L - 1)):
                with poutine.scale(scale=self.betas[l]):
                    z = pyro.sample(f"z{l + 1}", self.priors[l](z))
            out = self.x_decoder(z).reshape(z.shape[:-1] + (self.likelihood.num_params,) + self.x_shape)
            return pyro.sample("x", self.likelihood(out), obs=x)

    # -- q(z_1..z_L | x) ------------------------------------------------------------------------------
    def guide(self, x, n=None):
        self.register()
        L = len(self.latent_dims)
        with pyro.plate("data", x.shape[0]):
            if self.inference == "bottom-up":
                h = x
                for l in range(L):
                    with poutine.scale(scale=self.betas[l]):
                        h = pyro.sample(f"z{l + 1}", self.q_heads[l](self.encoders[l](h)))
                return h
            d, h = [], x
            for enc in self.encoders:
                h = enc(h)
                d.append(h)
            with poutine.scale(scale=self.betas[-1]):
                z = pyro.sample(f"z{L}", self.q_heads[-1](d[-1]))
            for l in reversed(range(L - 1)):
                p, q_hat = self.priors[l](z).base_dist, self.q_heads[l](d[l]).base_dist
                precision = q_hat.scale ** -2 + p.scale ** -2
                loc = (q_hat.loc * q_hat.scale ** -2 + p.loc * p.scale ** -2) / precision
                with poutine.scale(scale=self.betas[l]):
                    z = pyro.sample(f"z{l + 1}", dist.Normal(loc, precision ** -0.5).to_event(1))
            return z

    # -- what users call directly ---------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, x):
        """E_q[z1|x] (for ladder inference: given one draw of the layers above)."""
        with poutine.block():
            tr = poutine.trace(self.guide).get_trace(x)
        fn = tr.nodes["z1"]["fn"]
        try:
            return fn.mean
        except NotImplementedError:
            return torch.stack([fn.sample() for _ in range(64)]).mean(0)

    @torch.no_grad()
    def decode(self, z1):
        """E[x|z1]."""
        out = self.x_decoder(z1).reshape(z1.shape[:-1] + (self.likelihood.num_params,) + self.x_shape)
        return self.likelihood.mean(out)

    @torch.no_grad()
    def reconstruct(self, x):
        return self.decode(self.encode(x))

    @torch.no_grad()
    def sample(self, n: int, mean: bool = True):
        """n datapoints by ancestral sampling: E[x|z1] (``mean=True``) or a draw of x."""
        with poutine.block():
            tr = poutine.trace(self.model).get_trace(n=n)
        return self.decode(tr.nodes["z1"]["value"]) if mean else tr.nodes["x"]["value"]
