r"""A VAE with discrete latents: N categorical variables of K classes each, trained through the
Gumbel-softmax (concrete) relaxation (Jang, Gu & Poole 2017; Maddison et al. 2017).

Generative model, for each datapoint n: c_{n,j} ~ Cat(1/K) for j = 1..N, x_n ~ p_theta(x | c_n),
with c_n fed to the decoder as N one-hot rows. Guide: q_phi(c_{n,j} | x_n) = Cat(pi_{n,j}(x_n)).

Training replaces each one-hot c by a relaxed sample y = softmax((log pi + g) / tau) with
g ~ Gumbel(0, 1), differentiable in phi, whose temperature tau is annealed
tau_t = max(tau_min, tau_0 exp(-r t)) step by step (the trainer calls `anneal`).
Following Jang et al., the regularizer is the KL between the *categorical* distributions,
KL(q || p) = sum_j sum_k pi_jk log(K pi_jk), registered in closed form so that
``objective="mf-elbo"`` (TraceMeanField_ELBO) optimizes

.. math:: E_{y \sim \text{GS}(\pi, \tau)}[\log p_\theta(x \mid y)] - \mathrm{KL}(\operatorname{Cat}(\pi) \,\|\, \operatorname{Cat}(1/K)).

The density of a one-hot value is log Cat(c; pi) = sum_k c_k log pi_k; the distribution uses
the same formula for relaxed values (a soft cross-entropy), so Monte Carlo objectives ("elbo",
"iwae") also train. ``hard=True`` gives the straight-through variant (one-hot forward pass,
the relaxed gradient backward). In ``eval()`` mode samples are exactly one-hot draws from the
categorical, whose densities are exact: [`pvae.log_likelihood`][pvae.log_likelihood] then estimates the log p(x)
of the discrete model itself, sum_c p(c) p(x|c), by importance sampling with q(c|x).
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from torch.distributions import constraints, kl_divergence, register_kl
from torch.nn import functional as F

from pvae.models.base import PyroVAE
from pvae.nn.likelihoods import make_likelihood
from pvae.nn.nets import MLP
from pvae.util.validate import check_hidden, check_shape, check_size


class GumbelSoftmax(dist.TorchDistribution):
    """N independent K-way categoricals (event shape (N, K)) sampled one-hot, or relaxed at
    ``temperature`` > 0 (reparameterized; straight-through when ``hard``)."""

    arg_constraints = {"logits": constraints.real}
    support = constraints.simplex
    has_rsample = True

    def __init__(self, logits, temperature: float = 0.0, hard: bool = False, validate_args=None):
        self.logits = logits - logits.logsumexp(-1, keepdim=True)  # log pi
        self.temperature, self.hard = float(temperature), hard
        super().__init__(logits.shape[:-2], logits.shape[-2:], validate_args=False)

    def expand(self, batch_shape, _instance=None):
        return GumbelSoftmax(self.logits.expand(tuple(batch_shape) + self.event_shape), self.temperature, self.hard)

    @property
    def probs(self):
        return self.logits.exp()

    @property
    def mean(self):
        return self.probs

    def rsample(self, sample_shape=torch.Size()):
        logits = self.logits.expand(self._extended_shape(sample_shape))
        if self.temperature == 0:  # exact one-hot draws (no gradient)
            return F.one_hot(torch.distributions.Categorical(logits=logits.detach()).sample(), logits.shape[-1]).to(
                logits.dtype)
        return F.gumbel_softmax(logits, tau=self.temperature, hard=self.hard)

    def sample(self, sample_shape=torch.Size()):
        with torch.no_grad():
            return self.rsample(sample_shape)

    def log_prob(self, value):
        """sum_{j,k} value_jk log pi_jk: the categorical log-probability of one-hot values."""
        return (value * self.logits).sum((-2, -1))

    def entropy(self):
        return -(self.probs * self.logits).sum((-2, -1))


@register_kl(GumbelSoftmax, GumbelSoftmax)
def _kl_categorical(q, p):
    """The KL of the categoricals, whatever the temperature (Jang et al.'s regularizer)."""
    return (q.probs * (q.logits - p.logits)).sum((-2, -1))


class GumbelSoftmaxVAE(PyroVAE):
    """N x K categorical latents, Gumbel-softmax relaxation with an annealed temperature.

    Args:
        num_vars: N, the number of categorical latent variables.
        num_classes: K, the classes of each.
        temperature: tau_0, the starting temperature.
        min_temperature: tau_min.
        anneal_rate: r in tau_t = max(tau_min, tau_0 exp(-r t)), t the training step.
        hard: straight-through Gumbel-softmax (one-hot forward, relaxed backward).
    """

    def __init__(self, x_shape=(784,), num_vars=20, num_classes=10, hidden=(512, 256), activation="relu",
                 likelihood="bernoulli", temperature=1.0, min_temperature=0.5, anneal_rate=1e-4, hard=False):
        x_shape, hidden = check_shape("x_shape", x_shape), check_hidden(hidden)
        num_vars, num_classes = check_size("num_vars", num_vars), check_size("num_classes", num_classes, 2)
        hidden = check_hidden(hidden)
        if not 0 < min_temperature <= temperature:
            raise ValueError(f"temperatures need 0 < min_temperature <= temperature, got {min_temperature} "
                             f"and {temperature}")
        if not anneal_rate >= 0:
            raise ValueError(f"anneal_rate must be >= 0, got {anneal_rate}")
        super().__init__(x_shape=list(x_shape), num_vars=int(num_vars), num_classes=int(num_classes),
                         hidden=list(hidden), activation=activation, likelihood=likelihood,
                         temperature=float(temperature), min_temperature=float(min_temperature),
                         anneal_rate=float(anneal_rate), hard=bool(hard))
        self.x_shape, self.num_vars, self.num_classes, self.hard = x_shape, int(num_vars), int(num_classes), hard
        self.temperature0, self.min_temperature, self.anneal_rate = temperature, min_temperature, anneal_rate
        self.temperature = float(temperature)
        self.latent_shape = (self.num_vars, self.num_classes)
        numel, NK = math.prod(x_shape), self.num_vars * self.num_classes
        self.likelihood = make_likelihood(likelihood, x_shape)
        self.encoder = MLP(x_shape, hidden, (NK,), activation)
        self.decoder = MLP((NK,), hidden[::-1], (self.likelihood.num_params * numel,), activation)
        self.register_buffer("_zero", torch.zeros(()), persistent=False)

    def anneal(self, step: int) -> None:
        """Set tau for training step ``step`` (called by [`pvae.fit`][pvae.fit] before every step)."""
        self.temperature = max(self.min_temperature, self.temperature0 * math.exp(-self.anneal_rate * step))

    def _tau(self):
        return self.temperature if self.training else 0.0

    def prior(self, n: int):
        """p(c) = Cat(1/K) for each of the N variables."""
        return GumbelSoftmax(self._zero.expand(n, *self.latent_shape), self._tau(), self.hard)

    def posterior(self, x):
        """q(c|x), batch shape (n,), event shape (N, K)."""
        logits = self.encoder(x).reshape(x.shape[:-len(self.x_shape)] + self.latent_shape)
        return GumbelSoftmax(logits, self._tau(), self.hard)

    def decoder_params(self, c):
        out = self.decoder(c.flatten(-2))
        return out.reshape(c.shape[:-2] + (self.likelihood.num_params,) + self.x_shape)

    # -- p(c) p(x|c) and q(c|x) -------------------------------------------------------------------------
    def model(self, x=None, n=None):
        self.register()
        n = x.shape[0] if x is not None else n
        with pyro.plate("data", n):
            c = pyro.sample("c", self.prior(n))
            return pyro.sample("x", self.likelihood(self.decoder_params(c)), obs=x)

    def guide(self, x, n=None):
        self.register()
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("c", self.posterior(x))

    # -- what users call directly -----------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, x):
        """The most probable class of each latent variable, shape (n, N)."""
        return self.posterior(x).logits.argmax(-1)

    @torch.no_grad()
    def decode(self, c):
        """E[x|c] for class indices ``c`` (n, N) or one-hot codes (n, N, K)."""
        if not torch.is_floating_point(c):
            c = F.one_hot(c.long(), self.num_classes).to(self._zero.dtype)
        return self.likelihood.mean(self.decoder_params(c))

    @torch.no_grad()
    def sample(self, n: int, mean: bool = True):
        c = F.one_hot(torch.randint(self.num_classes, (n, self.num_vars), device=self._zero.device),
                      self.num_classes).to(self._zero.dtype)
        params = self.decoder_params(c)
        return self.likelihood.mean(params) if mean else self.likelihood(params).sample()

    @torch.no_grad()
    def kl(self, x):
        """KL(q(c|x) || p(c)) per datapoint, in nats (at most N log K)."""
        return kl_divergence(self.posterior(x), self.prior(x.shape[0]))
