r"""The variational autoencoder (Kingma & Welling 2014; Rezende et al. 2014) as a Pyro
model/guide pair.

Generative model (``model``), for each datapoint n of the data plate:

.. math:: z_n \sim p(z) = \mathcal N(0, I_D), \qquad x_n \sim p_\theta(x \mid z_n)

with p_theta(x|z) a Bernoulli, Gaussian or continuous-Bernoulli likelihood whose parameters
are the decoder's output. Amortized posterior (``guide``): q_phi(z|x) = N(mu_phi(x),
diag sigma_phi(x)^2), one encoder shared by all datapoints.

Both programs put z under ``poutine.scale(beta)``, so Trace_ELBO optimizes
E_q[log p(x|z)] - beta KL(q(z|x) || p(z)) (beta-VAE, Higgins et al. 2017; beta = 1 is the
VAE). Every site sits in ``pyro.plate("data")`` with ``.to_event`` for per-datapoint dims, so
per-datapoint bounds exist and a leading particle dim broadcasts through the nets.
"""

from __future__ import annotations

import math

import pyro
import torch
from pyro import poutine

from pvae.models.base import PyroVAE
from pvae.nn.guides import make_guide
from pvae.nn.likelihoods import make_likelihood
from pvae.nn.nets import MLP, ConvDecoder, ConvEncoder
from pvae.nn.priors import make_prior
from pvae.util.validate import check_hidden, check_number, check_shape, check_size


class VAE(PyroVAE):
    """A VAE with an MLP or convolutional encoder/decoder.

    Args:
        x_shape: shape of one datapoint, e.g. ``(784,)`` or ``(1, 28, 28)``.
        latent_dim: D, the size of z.
        hidden: widths of the encoder's hidden layers (the decoder mirrors them). For
            ``net="conv"`` the last width is the size of the conv encoder's features.
        activation: ``"tanh"``, ``"relu"``, ... (see [`pvae.nn.nets.ACTIVATIONS`][pvae.nn.nets.ACTIVATIONS]).
        likelihood: ``"bernoulli"``, ``"gaussian"`` or ``"continuous-bernoulli"``.
        guide: guide family: ``"diagonal"``, ``"fullcov"``, ``"lowrank"`` or ``"iaf"``.
        beta: weight of the KL term (> 0).
        net: ``"mlp"`` or ``"conv"`` (images of 28x28 or 32x32).
        likelihood_scale: fixed sigma of the Gaussian likelihood (None: learned per value).
        rank: rank of the ``"lowrank"`` guide's covariance factor (default 2).
        flow_steps: number of IAF steps of the ``"iaf"`` guide (default 2).
        prior: prior family p(z): ``"standard"`` N(0, I), ``"mog"`` (a learned mixture of
            Gaussians), ``"vamp"`` (the VampPrior: the guide at learned pseudo-inputs) or
            ``"flow"`` (N(0, I) through autoregressive flows); see [`pvae.nn.priors`][pvae.nn.priors].
        prior_components: K of the ``"mog"`` (default 10) and ``"vamp"`` (default 100) priors.
        prior_flow_steps: flow steps of the ``"flow"`` prior (default 2).
    """

    def __init__(self, x_shape=(784,), latent_dim=50, hidden=(200, 200), activation="tanh",
                 likelihood="bernoulli", guide="diagonal", beta=1.0, net="mlp", likelihood_scale=None,
                 rank=None, flow_steps=None, prior="standard", prior_components=None, prior_flow_steps=None):
        x_shape, hidden = check_shape("x_shape", x_shape), check_hidden(hidden)
        if not x_shape or min(x_shape) < 1:
            raise ValueError(f"x_shape must be a non-empty tuple of positive sizes, got {x_shape}")
        latent_dim, hidden = check_size("latent_dim", latent_dim), check_hidden(hidden)
        beta = check_number("beta", beta, low=0, open_low=True)
        super().__init__(x_shape=list(x_shape), latent_dim=int(latent_dim), hidden=list(hidden),
                         activation=activation, likelihood=likelihood, guide=guide, beta=float(beta),
                         net=net, likelihood_scale=likelihood_scale, rank=rank, flow_steps=flow_steps, prior=prior,
                         prior_components=prior_components, prior_flow_steps=prior_flow_steps)
        self.x_shape, self.latent_dim, self.beta = x_shape, int(latent_dim), float(beta)
        self.likelihood = make_likelihood(likelihood, x_shape, likelihood_scale)
        P = self.likelihood.num_params
        if net == "mlp":
            self.encoder = MLP(x_shape, hidden, None, activation)
            self.decoder = MLP((latent_dim,), hidden[::-1], (P * math.prod(x_shape),), activation)
        elif net == "conv":
            self.encoder = ConvEncoder(x_shape, hidden[-1], activation_name=activation)
            self.decoder = ConvDecoder(latent_dim, x_shape, P, activation_name=activation)
        else:
            raise ValueError(f"unknown net {net!r}; choose 'mlp' or 'conv'")
        self.q = make_guide(guide, hidden[-1], latent_dim, rank=rank, flow_steps=flow_steps)
        if prior == "vamp" and guide == "iaf":
            raise ValueError("the VampPrior is a mixture of the guide at pseudo-inputs, and the iaf guide has no "
                             "batched density for one: use guide='diagonal', 'fullcov' or 'lowrank'")
        self.prior_kind = prior
        self.p = make_prior(prior, latent_dim, multivariate=self.q.multivariate, components=prior_components,
                            flow_steps=prior_flow_steps, x_shape=x_shape,
                            unit_interval=self.likelihood.support == (0.0, 1.0))
        self.register_buffer("_zero", torch.zeros(()), persistent=False)

    # -- the generative model p(z) p(x|z) and the amortized guide q(z|x) ------------------------
    def prior(self, n: int):
        """p(z) for a batch of n datapoints: N(0, I) (an MVN when the guide is one, so that the
        KL term has a closed form) or the learned family chosen by ``prior``."""
        return self.p(self._zero.expand(n, self.latent_dim), posterior=self.posterior)

    def decoder_params(self, z):
        """Decoder output reshaped to ``(*batch, num_params, *x_shape)``."""
        return self.decoder(z).reshape(z.shape[:-1] + (self.likelihood.num_params,) + self.x_shape)

    def model(self, x=None, n=None):
        """p(z) p(x|z). With ``x=None``, generates ``n`` datapoints (site ``"x"`` is sampled)."""
        self.register()
        n = x.shape[0] if x is not None else n
        with pyro.plate("data", n):
            with poutine.scale(scale=self.beta):
                z = pyro.sample("z", self.prior(n))
            return pyro.sample("x", self.likelihood(self.decoder_params(z)), obs=x)

    def guide(self, x, n=None):
        """q(z|x) = N(mu(x), diag sigma(x)^2)."""
        self.register()
        with pyro.plate("data", x.shape[0]):
            with poutine.scale(scale=self.beta):
                return pyro.sample("z", self.q(self.encoder(x)))

    # -- what users call directly --------------------------------------------------------------
    def posterior(self, x):
        """The distribution q(z|x), batch shape ``(n,)``."""
        return self.q(self.encoder(x))

    @torch.no_grad()
    def encode(self, x, num_samples: int = 256):
        """The posterior mean E_q[z|x], shape ``(n, latent_dim)``: in closed form, or for guides
        without one (an IAF flow) the average of ``num_samples`` draws."""
        q = self.posterior(x)
        try:
            return q.mean
        except NotImplementedError:
            return q.sample((num_samples,)).mean(0)

    # decode(z) = E[x|z] and reconstruct(x) = decode(encode(x)) come from PyroVAE

    @torch.no_grad()
    def sample(self, n: int, mean: bool = True):
        """n new datapoints from z ~ p(z): E[x|z] (``mean=True``) or a draw x ~ p(x|z)."""
        z = self.prior(n).sample()
        return self.decode(z) if mean else self.likelihood(self.decoder_params(z)).sample()
