r"""Inference objectives: a registry of Pyro ELBOs by name, and pvae's per-datapoint
importance-weighted bound.

For one datapoint x and k draws z_1..z_k ~ q(z|x), the *log-weights* are

.. math:: \log w_i = \log p(x, z_i) - \log q(z_i | x),

and every bound here is a function of them:

- ELBO:  L_1 = E_q[\log w]  (``"elbo"``: Pyro's ``Trace_ELBO``; ``"mf-elbo"``:
  ``TraceMeanField_ELBO``, the KL term in closed form where one is registered);
- IWAE (Burda et al. 2016):  L_k = E[\log \frac{1}{k} \sum_i w_i] <= \log p(x), increasing in k;
- Rényi-alpha (Li & Turner 2016):  L_alpha = \frac{1}{1-\alpha} E[\log \frac{1}{k}\sum_i w_i^{1-\alpha}]
  (alpha = 0 is IWAE; alpha -> 1 the ELBO).

Pyro's ``vectorized_importance_weights`` sums the log-weights over the data plate, so it
gives one weight per *batch*. :func:`log_weight_terms` keeps one per datapoint: every sample
site of a datapoint must sit inside ``pyro.plate("data", ...)`` (the house rule), particles are
drawn in one vectorized pass along a dim left of all plates, and log-probs are summed over every
dim except (particle, data).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import pyro
import torch
from pyro import poutine
from pyro.infer import ELBO, Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.enum import get_importance_trace
from pyro.poutine.util import site_is_subsample

DATA_PLATE = "data"


class LogWeightTerms(NamedTuple):
    """Per-datapoint log-densities of k particles, each of shape ``(k, batch)``.

    ``log_px_z``: observed sites, log p(x | z); ``log_pz``: latent sites of the model, log p(z);
    ``log_qz``: the guide, log q(z | x). ``latent_scale`` / ``obs_scale`` are the
    ``poutine.scale`` factors found on those sites (beta, warm-up, subsampling).
    """

    log_px_z: torch.Tensor
    log_pz: torch.Tensor
    log_qz: torch.Tensor
    latent_scale: float
    obs_scale: float

    @property
    def log_weights(self):
        """log w = log p(x, z) - log q(z | x), unscaled: the true importance weights."""
        return self.log_px_z + self.log_pz - self.log_qz


def _check_in_plate(site, data_plate: str) -> None:
    if not any(f.name == data_plate for f in site["cond_indep_stack"]):
        raise ValueError(
            f"sample site {site['name']!r} is outside the data plate: pvae computes per-datapoint "
            f"bounds, so every sample site of a datapoint must sit inside pyro.plate({data_plate!r}, ...)")


def guess_max_plate_nesting(model, guide, *args, data_plate: str = DATA_PLATE, **kwargs) -> int:
    """How many plate dims the model and guide use, from one plain run of each (the random-number
    state is restored afterwards, so guessing does not change later draws). Checks on the way
    that every sample site sits inside the data plate."""
    cuda = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    with poutine.block(), torch.random.fork_rng(devices=cuda):
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    nesting = 0
    for tr in (model_trace, guide_trace):
        for site in tr.nodes.values():
            if site["type"] == "sample" and not site_is_subsample(site):
                _check_in_plate(site, data_plate)
                nesting = max([nesting] + [-f.dim for f in site["cond_indep_stack"] if f.vectorized])
    return nesting


def _scale_of(site) -> float:
    s = site["scale"]
    if isinstance(s, torch.Tensor):
        if s.numel() != 1:
            raise ValueError(f"site {site['name']!r} has a tensor scale; pvae's per-datapoint "
                             "bounds need one scale per site")
        s = float(s)
    return float(s)


def _per_datapoint(site, num_dims: int, k: int, batch: int, data_plate: str) -> torch.Tensor:
    """Sum a site's log-prob over every dim but (particle, data) -> shape ``(k, batch)``."""
    _check_in_plate(site, data_plate)
    frames = [f for f in site["cond_indep_stack"] if f.name == data_plate]
    lp = site["fn"].log_prob(site["value"])
    if site["mask"] is not None and site["mask"] is not True:
        lp = torch.where(torch.as_tensor(site["mask"], device=lp.device), lp, lp.new_zeros(()))
    if lp.dim() > num_dims:
        raise ValueError(
            f"site {site['name']!r} has batch shape {tuple(lp.shape)}, more dims than its plates "
            f"and the particle dim ({num_dims}): declare per-datapoint dims with .to_event(...)")
    lp = lp.reshape((1,) * (num_dims - lp.dim()) + tuple(lp.shape))
    data_dim = num_dims + frames[0].dim
    other = [d for d in range(1, num_dims) if d != data_dim]
    if other:
        lp = lp.sum(other, keepdim=True)
    return lp.reshape(lp.shape[0], lp.shape[data_dim]).expand(k, batch)


def log_weight_terms(model, guide, *args, num_particles: int = 1, max_plate_nesting: int | None = None,
                     data_plate: str = DATA_PLATE, **kwargs) -> LogWeightTerms:
    """Draw ``num_particles`` z ~ q(z|x) in one vectorized pass and return per-datapoint
    log p(x|z), log p(z) and log q(z|x), each of shape ``(num_particles, batch)``.

    ``model`` and ``guide`` take the same ``*args, **kwargs``. The draws are reparameterized
    where the guide's distributions allow it, so the result is differentiable.
    """
    if max_plate_nesting is None:
        max_plate_nesting = guess_max_plate_nesting(model, guide, *args, data_plate=data_plate, **kwargs)
    num_dims = max_plate_nesting + 1
    with pyro.plate("_pvae_particles", num_particles, dim=-num_dims):
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)

    batch = None
    for tr in (model_trace, guide_trace):
        for site in tr.nodes.values():
            if site["type"] == "sample":
                for f in site["cond_indep_stack"]:
                    if f.name == data_plate:
                        batch = f.size
    if batch is None:
        raise ValueError(f"no sample site is inside pyro.plate({data_plate!r}, ...): pvae needs "
                         "every sample site of a datapoint inside that plate")

    k = num_particles
    zero = None
    log_px_z = log_pz = log_qz = 0.0
    latent_scales, obs_scales = set(), set()
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site) or site["infer"].get("_do_not_score"):
            continue
        lp = _per_datapoint(site, num_dims, k, batch, data_plate)
        zero = lp.new_zeros(k, batch) if zero is None else zero
        if site["is_observed"]:
            log_px_z = log_px_z + lp
            obs_scales.add(_scale_of(site))
        else:
            if name not in guide_trace.nodes:
                raise ValueError(f"latent site {name!r} of the model has no match in the guide")
            log_pz = log_pz + lp
            latent_scales.add(_scale_of(site))
    for name, site in guide_trace.nodes.items():
        if site["type"] != "sample" or site["is_observed"] or site_is_subsample(site):
            continue
        log_qz = log_qz + _per_datapoint(site, num_dims, k, batch, data_plate)
        latent_scales.add(_scale_of(site))
    if len(obs_scales) > 1 or len(latent_scales) > 1:
        raise ValueError(f"pvae's importance-weighted bounds need one scale on all observed sites "
                         f"and one on all latent sites; found {sorted(obs_scales)} and "
                         f"{sorted(latent_scales)}")

    def as_tensor(t):
        return t if isinstance(t, torch.Tensor) else zero.clone()

    return LogWeightTerms(as_tensor(log_px_z), as_tensor(log_pz), as_tensor(log_qz),
                          latent_scales.pop() if latent_scales else 1.0,
                          obs_scales.pop() if obs_scales else 1.0)


class ImportanceWeightedELBO(ELBO):
    r"""pvae's per-datapoint importance-weighted (alpha = 0) and Rényi-alpha bound as a Pyro ELBO.

    For each datapoint b, with k particles,

    .. math:: L_b = \frac{1}{1-\alpha} \log \frac{1}{k} \sum_i \exp\big((1-\alpha)\,
              [\log p(x_b|z_i) + \beta(\log p(z_i) - \log q(z_i|x_b))]\big)

    where beta is the scale on the latent sites *relative to* the observed ones (beta-VAE,
    KL warm-up). The scale on the observed sites (subsampling, a global ``poutine.scale``)
    multiplies L_b *outside* the logsumexp: loss = -s * sum_b L_b. Pyro's ``RenyiELBO``
    instead puts every scale inside its logsumexp, and sums over the batch before it whenever a
    site sits outside the data plate; here that is an error.

    ``differentiable_loss`` makes it usable with any torch optimizer (and DDP).
    """

    def __init__(self, num_particles: int = 5, alpha: float = 0.0, max_plate_nesting=float("inf"),
                 data_plate: str = DATA_PLATE):
        if int(num_particles) != num_particles or num_particles < 1:
            raise ValueError(f"the number of importance samples k must be an integer >= 1, got {num_particles}")
        if alpha == 1:
            raise ValueError("alpha = 1 is the ELBO's limit, not a Rényi bound: use objective 'elbo'")
        super().__init__(num_particles=int(num_particles), max_plate_nesting=max_plate_nesting,
                         vectorize_particles=True)
        self.alpha = float(alpha)
        self.data_plate = data_plate

    def _get_trace(self, model, guide, args, kwargs):
        """One (model, guide) trace pair, as Pyro's ELBO base class expects."""
        return get_importance_trace("flat", self.max_plate_nesting, model, guide, args, kwargs)

    def per_datapoint(self, model, guide, *args, **kwargs):
        """``(L, s)``: the bound L_b of each datapoint (shape ``(batch,)``) and the outer scale s."""
        if self.max_plate_nesting == float("inf"):
            self.max_plate_nesting = guess_max_plate_nesting(model, guide, *args, data_plate=self.data_plate,
                                                             **kwargs)
        t = log_weight_terms(model, guide, *args, num_particles=self.num_particles,
                             max_plate_nesting=self.max_plate_nesting, data_plate=self.data_plate, **kwargs)
        beta = t.latent_scale / t.obs_scale
        lw = t.log_px_z + beta * (t.log_pz - t.log_qz)
        a = 1.0 - self.alpha
        bound = (torch.logsumexp(a * lw, dim=0) - math.log(self.num_particles)) / a
        return bound, t.obs_scale

    def differentiable_loss(self, model, guide, *args, **kwargs):
        bound, scale = self.per_datapoint(model, guide, *args, **kwargs)
        return -scale * bound.sum()

    def loss(self, model, guide, *args, **kwargs):
        with torch.no_grad():
            return self.differentiable_loss(model, guide, *args, **kwargs).item()

    def loss_and_grads(self, model, guide, *args, **kwargs):
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        loss.backward()
        return loss.item()


OBJECTIVES = {
    "elbo": "Trace_ELBO: E_q[log p(x,z) - log q(z|x)], Monte Carlo with k particles",
    "mf-elbo": "TraceMeanField_ELBO: reconstruction by Monte Carlo, KL in closed form",
    "iwae": "importance-weighted bound with k samples (pvae's per-datapoint ELBO)",
    "renyi": "Rényi-alpha bound with k samples, alpha != 1 (pvae's per-datapoint ELBO)",
}


def objective(name: str = "elbo", k: int = 1, alpha: float = 0.5, **kwargs) -> ELBO:
    """The Pyro ELBO instance behind an objective name.

    >>> pvae.objective("iwae", k=5).loss(m.model, m.guide, x)  # doctest: +SKIP

    ``k`` is the number of particles (samples of z per datapoint), drawn in one vectorized
    pass; ``alpha`` is used by ``"renyi"`` only. Extra keyword arguments go to the ELBO.
    """
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; choose one of {sorted(OBJECTIVES)}")
    if int(k) != k or k < 1:
        raise ValueError(f"the number of samples k must be an integer >= 1, got {k}")
    k = int(k)
    if name in ("elbo", "mf-elbo"):
        cls = Trace_ELBO if name == "elbo" else TraceMeanField_ELBO
        return cls(num_particles=k, vectorize_particles=k > 1, **kwargs)
    if name == "iwae":
        return ImportanceWeightedELBO(num_particles=k, alpha=0.0, **kwargs)
    return ImportanceWeightedELBO(num_particles=k, alpha=alpha, **kwargs)
