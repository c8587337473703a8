r"""Prior families p(z): chosen by name, like guide families (``VAE(prior="vamp")``).

Each family is an ``nn.Module`` whose ``forward(zeros, posterior=None)`` returns a Pyro
distribution with batch shape ``zeros.shape[:-1]`` (the data plate) and event shape ``(D,)``,
so the model writes ``pyro.sample("z", self.p(zeros))`` whatever the family, and every objective,
the evaluator (log p(x) needs log p(z)) and sampling use it unchanged.

- ``"standard"``: p(z) = N(0, I).
- ``"mog"``: a mixture of K Gaussians with learned weights, means and diagonal scales,

  .. math:: p(z) = \sum_k \pi_k \, \mathcal N(z; \mu_k, \mathrm{diag}\, \sigma_k^2),
     \qquad \pi = \mathrm{softmax}(a), \ \sigma_k = \mathrm{softplus}(s_k) + 10^{-4}.

- ``"vamp"``: the VampPrior (Tomczak & Welling 2018), the guide itself at K learned
  pseudo-inputs u_k,

  .. math:: p(z) = \frac1K \sum_k q_\phi(z \mid u_k),

  so the prior follows the aggregate posterior it is pulled towards (``posterior`` is the
  model's ``u -> q(z|u)``; pseudo-inputs live in the data's range: a sigmoid for [0, 1] data).
- ``"flow"``: z = f(eps), eps ~ N(0, I), f a stack of ``flow_steps`` affine autoregressive
  transforms (Pyro's ``AffineAutoregressive``), inverted so that the density is one pass:

  .. math:: \log p(z) = \log \mathcal N(f^{-1}(z); 0, I) + \log \left| \det
     \frac{\partial f^{-1}(z)}{\partial z} \right|

  (sampling runs the D autoregressive steps one after another).

Only ``"standard"`` has a closed-form KL against a Gaussian guide: ``mf-elbo`` refuses the others.
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from pyro.nn import AutoRegressiveNN
from torch import nn
from torch.nn import functional as F

from pvae.nn.guides import MIN_SCALE, standard_normal
from pvae.util.validate import check_memory, check_size


class StandardPrior(nn.Module):
    """p(z) = N(0, I) (an MVN when the guide is one, so the KL has a closed form)."""

    def __init__(self, latent_dim: int, multivariate: bool = False):
        super().__init__()
        self.latent_dim, self.multivariate = latent_dim, multivariate

    def forward(self, zeros, posterior=None):
        return standard_normal(zeros, self.multivariate)


class MixturePrior(nn.Module):
    """p(z) = sum_k pi_k N(mu_k, diag sigma_k^2), all learned."""

    def __init__(self, latent_dim: int, components: int = 10):
        super().__init__()
        K = check_size("prior_components", components)
        check_memory(4.0 * K * (2 * latent_dim + 1) * 4, f"a mixture prior of {K} components",  # weights, grads, Adam
                     f"prior_components ({K})")
        self.logits = nn.Parameter(torch.zeros(K))
        self.loc = nn.Parameter(torch.randn(K, latent_dim))  # spread like N(0, I) at the start
        self.raw_scale = nn.Parameter(torch.full((K, latent_dim), math.log(math.e - 1)))  # softplus -> 1

    def forward(self, zeros, posterior=None):
        components = dist.Normal(self.loc, F.softplus(self.raw_scale) + MIN_SCALE).to_event(1)
        mixture = dist.MixtureSameFamily(dist.Categorical(logits=self.logits), components)
        return mixture.expand(zeros.shape[:-1])


class VampPrior(nn.Module):
    """p(z) = (1/K) sum_k q(z | u_k) with K learned pseudo-inputs u_k of the data's shape."""

    def __init__(self, latent_dim: int, x_shape, components: int = 100, unit_interval: bool = True):
        super().__init__()
        K = check_size("prior_components", components)
        check_memory(4.0 * K * math.prod(x_shape) * 4, f"a VampPrior of {K} pseudo-inputs", f"prior_components ({K})")
        self.unit_interval = unit_interval
        self.raw = nn.Parameter(torch.randn((K,) + tuple(x_shape)) * 0.1)

    def pseudo_inputs(self) -> torch.Tensor:
        """u_1..u_K, shape ``(K, *x_shape)``: in [0, 1] for data in [0, 1]."""
        return torch.sigmoid(self.raw) if self.unit_interval else self.raw

    def forward(self, zeros, posterior=None):
        if posterior is None:
            raise ValueError("the VampPrior needs the model's posterior u -> q(z|u)")
        components = posterior(self.pseudo_inputs())  # batch (K,), event (D,)
        mixture = dist.MixtureSameFamily(dist.Categorical(logits=zeros.new_zeros(self.raw.shape[0])), components)
        return mixture.expand(zeros.shape[:-1])


class FlowPrior(nn.Module):
    """N(0, I) pushed through ``flow_steps`` affine autoregressive transforms (MAF direction)."""

    def __init__(self, latent_dim: int, flow_steps: int = 2, hidden: int | None = None):
        super().__init__()
        steps = check_size("prior_flow_steps", flow_steps)
        if latent_dim < 2:
            raise ValueError("the flow prior needs latent_dim >= 2 (an autoregressive flow on one dim is affine)")
        width = hidden or max(2 * latent_dim, 16)
        self.flows = nn.ModuleList(
            T.AffineAutoregressive(AutoRegressiveNN(latent_dim, [width], permutation=torch.arange(latent_dim).flip(0)
                                                    if i % 2 else torch.arange(latent_dim)))
            for i in range(steps))
        for f in self.flows:  # loc 0, log-scale 0: each step starts as the identity, the prior as N(0, I)
            last = f.arn.layers[-1]
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    def forward(self, zeros, posterior=None):
        base = dist.Normal(zeros, 1.0).to_event(1)
        # each step's inverse is its fast (parallel) direction: log p(z) costs one pass per step
        return dist.TransformedDistribution(base, [f.inv for f in reversed(self.flows)])


PRIORS = ("standard", "mog", "vamp", "flow")


def make_prior(name: str, latent_dim: int, *, multivariate: bool = False, components: int | None = None,
               flow_steps: int | None = None, x_shape=None, unit_interval: bool = True) -> nn.Module:
    """The prior family called ``name`` over a latent of ``latent_dim``.

    ``components``: K of ``"mog"`` (default 10) and ``"vamp"`` (default 100); ``flow_steps`` of
    ``"flow"`` (default 2); ``x_shape`` and ``unit_interval`` shape the VampPrior's pseudo-inputs.
    """
    if name not in PRIORS:
        raise ValueError(f"unknown prior {name!r}; choose one of {list(PRIORS)}")
    if components is not None and name not in ("mog", "vamp"):
        raise ValueError(f"prior_components applies to the 'mog' and 'vamp' priors, not {name!r}")
    if flow_steps is not None and name != "flow":
        raise ValueError(f"prior_flow_steps applies to the 'flow' prior, not {name!r}")
    if name == "standard":
        return StandardPrior(latent_dim, multivariate)
    if name == "mog":
        return MixturePrior(latent_dim, 10 if components is None else components)
    if name == "vamp":
        return VampPrior(latent_dim, x_shape, 100 if components is None else components, unit_interval)
    return FlowPrior(latent_dim, 2 if flow_steps is None else flow_steps)


@torch.no_grad()
def aggregate_kl(model, data, n: int = 1000, batch_size: int = 250, seed: int = 0) -> float:
    r"""KL(q(z) || p(z)) of the aggregate posterior q(z) = (1/N) sum_n q(z | x_n) against the
    prior, on the first ``n`` datapoints (Hoffman & Johnson 2016's marginal KL):

    .. math:: \mathrm{KL} \approx \frac1N \sum_i \Big[\log \frac1N \sum_j q(z_i \mid x_j)
       - \log p(z_i)\Big], \qquad z_i \sim q(z \mid x_i).

    The lower it is, the better the prior fits the codes the encoder uses (samples from p(z)
    land where the decoder was trained). A Monte Carlo estimate whose inner sum is over the same
    N datapoints: compare models on the same data and N.
    """
    from pvae.data.datasets import as_tensors
    from pvae.util.validate import check_positive_int

    n = check_positive_int("n (datapoints)", n, minimum=2)
    batch_size = check_positive_int("batch_size", batch_size)
    x = as_tensors(data)[0][:n].to(model._zero.device)
    x = x.reshape((x.shape[0],) + tuple(model.x_shape))
    if not hasattr(model, "posterior"):
        raise ValueError(f"aggregate_kl needs a model with posterior(x) and prior(n); {type(model).__name__} has none")
    was = model.training
    model.eval()
    try:
        q = model.posterior(x)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            z = q.sample()
        try:
            log_q = torch.cat([q.log_prob(z[i:i + batch_size].unsqueeze(1)) for i in range(0, len(z), batch_size)])
        except (RuntimeError, ValueError):
            raise ValueError(f"aggregate_kl needs a guide whose density takes a batch of draws against every "
                             f"datapoint; {type(q).__name__} does not") from None
        log_q_agg = torch.logsumexp(log_q, dim=1) - math.log(len(z))
        log_p = model.prior(len(z)).log_prob(z)
    finally:
        model.train(was)
    return float((log_q_agg - log_p).mean())
