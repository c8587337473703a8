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
from torch import nn
from pyro.infer import ELBO, RenyiELBO, Trace_ELBO, TraceEnum_ELBO, TraceMeanField_ELBO
from pyro.infer.enum import get_importance_trace
from pyro.infer.util import get_dependent_plate_dims, torch_sum
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


def _plain_traces(model, guide, *args, **kwargs):
    """One run of guide and model, hidden from outer handlers, without gradients, and with the
    random-number state restored afterwards (so that looking does not change later draws)."""
    cuda = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    with poutine.block(), torch.random.fork_rng(devices=cuda), torch.no_grad():
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    return model_trace, guide_trace


def guess_max_plate_nesting(model, guide, *args, data_plate: str = DATA_PLATE, **kwargs) -> int:
    """How many plate dims the model and guide use, from one plain run of each (the random-number
    state is restored afterwards, so guessing does not change later draws). Checks on the way
    that every sample site sits inside the data plate."""
    model_trace, guide_trace = _plain_traces(model, guide, *args, **kwargs)
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


def vectorized_traces(model, guide, *args, num_particles: int, max_plate_nesting: int, **kwargs):
    """``(model_trace, guide_trace)`` with ``num_particles`` draws of every latent, taken in one
    pass along a particle dim to the left of all plates."""
    with pyro.plate("_pvae_particles", num_particles, dim=-(max_plate_nesting + 1)):
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    return model_trace, guide_trace


def _batch_size(traces, data_plate):
    for tr in traces:
        for site in tr.nodes.values():
            if site["type"] == "sample":
                for f in site["cond_indep_stack"]:
                    if f.name == data_plate:
                        return f.size
    raise ValueError(f"no sample site is inside pyro.plate({data_plate!r}, ...): pvae needs "
                     "every sample site of a datapoint inside that plate")


def _latent_sites(trace):
    return [(name, site) for name, site in trace.nodes.items()
            if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)]


def terms_from_traces(model_trace, guide_trace, num_particles: int, max_plate_nesting: int,
                      data_plate: str = DATA_PLATE) -> LogWeightTerms:
    """Per-datapoint log p(x|z), log p(z), log q(z|x) (each ``(k, batch)``) from a model trace
    replayed against a vectorized guide trace."""
    num_dims, k = max_plate_nesting + 1, num_particles
    batch = _batch_size((model_trace, guide_trace), data_plate)
    log_px_z = log_pz = log_qz = None
    latent_scales, obs_scales = set(), set()

    def add(total, lp):
        return lp if total is None else total + lp

    for name, site in model_trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site) or site["infer"].get("_do_not_score"):
            continue
        lp = _per_datapoint(site, num_dims, k, batch, data_plate)
        if site["is_observed"]:
            log_px_z = add(log_px_z, lp)
            obs_scales.add(_scale_of(site))
        else:
            if name not in guide_trace.nodes:
                raise ValueError(f"latent site {name!r} of the model has no match in the guide")
            log_pz = add(log_pz, lp)
            latent_scales.add(_scale_of(site))
    for name, site in _latent_sites(guide_trace):
        log_qz = add(log_qz, _per_datapoint(site, num_dims, k, batch, data_plate))
        latent_scales.add(_scale_of(site))
    if len(obs_scales) > 1 or len(latent_scales) > 1:
        raise ValueError(f"pvae's importance-weighted bounds need one scale on all observed sites "
                         f"and one on all latent sites; found {sorted(obs_scales)} and "
                         f"{sorted(latent_scales)}")
    some = next(t for t in (log_px_z, log_pz, log_qz) if t is not None)
    zero = some.new_zeros(k, batch)
    return LogWeightTerms(*(zero if t is None else t for t in (log_px_z, log_pz, log_qz)),
                          latent_scales.pop() if latent_scales else 1.0,
                          obs_scales.pop() if obs_scales else 1.0)


def log_weight_terms(model, guide, *args, num_particles: int = 1, max_plate_nesting: int | None = None,
                     data_plate: str = DATA_PLATE, **kwargs) -> LogWeightTerms:
    """Draw ``num_particles`` z ~ q(z|x) in one vectorized pass and return per-datapoint
    log p(x|z), log p(z) and log q(z|x), each of shape ``(num_particles, batch)``.

    ``model`` and ``guide`` take the same ``*args, **kwargs``. The draws are reparameterized
    where the guide's distributions allow it, so the result is differentiable.
    """
    if max_plate_nesting is None:
        max_plate_nesting = guess_max_plate_nesting(model, guide, *args, data_plate=data_plate, **kwargs)
    model_trace, guide_trace = vectorized_traces(model, guide, *args, num_particles=num_particles,
                                                 max_plate_nesting=max_plate_nesting, **kwargs)
    return terms_from_traces(model_trace, guide_trace, num_particles, max_plate_nesting, data_plate)


class ImportanceWeightedELBO(ELBO):
    r"""pvae's per-datapoint importance-weighted (alpha = 0) and Rényi-alpha bound as a Pyro ELBO.

    For each datapoint b, with k particles and log-weights
    log w_i = log p(x_b|z_i) + beta (log p(z_i) - log q(z_i|x_b)),

    .. math:: L_b = \frac{1}{1-\alpha} \log \frac{1}{k} \sum_i w_i^{1-\alpha}

    where beta is the scale on the latent sites *relative to* the observed ones (beta-VAE,
    KL warm-up). The scale on the observed sites (subsampling, a global ``poutine.scale``)
    multiplies L_b *outside* the logsumexp: loss = -s * sum_b L_b. Pyro's ``RenyiELBO``
    instead puts every scale inside its logsumexp, and sums over the batch before it whenever a
    site sits outside the data plate; here that is an error.

    ``differentiable_loss`` makes it usable with any torch optimizer (and DDP). Subclasses
    change :meth:`bound` (MIWAE, CIWAE) or the gradient estimator (DReG, STL, PIWAE).
    """

    def __init__(self, num_particles: int = 5, alpha: float = 0.0, max_plate_nesting=float("inf"),
                 data_plate: str = DATA_PLATE):
        if int(num_particles) != num_particles or num_particles < 1:
            raise ValueError(f"the number of importance samples k must be an integer >= 1, got {num_particles}")
        if alpha == 1:
            raise ValueError("alpha = 1 is the ELBO's limit, not a Rényi bound: use objective 'elbo'")
        # Pyro's base class only holds num_particles here: pvae draws particles itself, along a
        # dim left of ``plate_nesting`` plates (Pyro's max_plate_nesting would count that dim too)
        super().__init__(num_particles=int(num_particles))
        self.plate_nesting = max_plate_nesting
        self.alpha = float(alpha)
        self.data_plate = data_plate

    def _get_trace(self, model, guide, args, kwargs):
        """One (model, guide) trace pair, as Pyro's ELBO base class expects."""
        return get_importance_trace("flat", self._nesting(model, guide, args, kwargs), model, guide, args, kwargs)

    def _nesting(self, model, guide, args, kwargs) -> int:
        if self.plate_nesting == float("inf"):
            self.plate_nesting = guess_max_plate_nesting(model, guide, *args, data_plate=self.data_plate, **kwargs)
        return self.plate_nesting

    def bound(self, log_w: torch.Tensor) -> torch.Tensor:
        """The per-datapoint bound from scaled log-weights of shape ``(k, batch)``."""
        a = 1.0 - self.alpha
        return (torch.logsumexp(a * log_w, dim=0) - math.log(log_w.shape[0])) / a

    def per_datapoint(self, model, guide, *args, **kwargs):
        """``(L, s)``: the bound L_b of each datapoint (shape ``(batch,)``) and the outer scale s."""
        t = log_weight_terms(model, guide, *args, num_particles=self.num_particles,
                             max_plate_nesting=self._nesting(model, guide, args, kwargs),
                             data_plate=self.data_plate, **kwargs)
        beta = t.latent_scale / t.obs_scale
        return self.bound(t.log_px_z + beta * (t.log_pz - t.log_qz)), t.obs_scale

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


def _groups(what: str, M, K) -> tuple[int, int]:
    for name, v in (("M", M), ("K", K)):
        if int(v) != v or v < 1:
            raise ValueError(f"{what}'s {name} must be an integer >= 1, got {v}")
    return int(M), int(K)


class MultiImportanceWeightedELBO(ImportanceWeightedELBO):
    r"""MIWAE (Rainforth et al. 2018): the average of M independent K-sample IWAE bounds,
    :math:`\frac1M \sum_m \log \frac1K \sum_k w_{mk}`, from M x K particles."""

    def __init__(self, M: int = 8, K: int = 8, **kwargs):
        self.M, self.K = _groups("MIWAE", M, K)
        super().__init__(num_particles=self.M * self.K, **kwargs)

    def bound(self, log_w):
        g = log_w.reshape(self.M, self.K, -1)
        return (torch.logsumexp(g, dim=1) - math.log(self.K)).mean(0)


class CombinationIWAE(ImportanceWeightedELBO):
    r"""CIWAE (Rainforth et al. 2018): :math:`\beta\, \mathrm{ELBO} + (1-\beta)\, \mathrm{IWAE}_k`,
    both from the same k particles, 0 <= beta <= 1."""

    def __init__(self, num_particles: int = 8, beta: float = 0.5, **kwargs):
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"CIWAE's beta must lie in [0, 1], got {beta}")
        super().__init__(num_particles=num_particles, **kwargs)
        self.beta = float(beta)

    def bound(self, log_w):
        iwae = torch.logsumexp(log_w, dim=0) - math.log(log_w.shape[0])
        return self.beta * log_w.mean(0) + (1.0 - self.beta) * iwae


class _GradScale(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by ``box.scale`` (reshaped to ``view``),
    a tensor filled in after the forward pass, once the importance weights are known."""

    @staticmethod
    def forward(ctx, z, box, view):
        ctx.box, ctx.view = box, view
        return z.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.box.scale.reshape(ctx.view), None, None


class _Box:
    scale: torch.Tensor


class _Call(nn.Module):
    """Calls any function while ``torch.func.functional_call`` has swapped ``module``'s parameters."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, fn, *args, **kwargs):
        return fn(*args, **kwargs)


def _owner(fn):
    """The ``nn.Module`` a (possibly handler-wrapped) method belongs to, or None."""
    while fn is not None:
        owner = getattr(fn, "__self__", None)
        if isinstance(owner, nn.Module):
            return owner
        # functools.wraps sets __wrapped__; Pyro's handlers bind (messenger, fn) as a partial
        args = getattr(fn, "args", ())
        fn = getattr(fn, "__wrapped__", None) or (args[-1] if args and callable(args[-1]) else None)
    return None


def with_detached_params(fn):
    """``fn`` (a method of an ``nn.Module``, possibly wrapped in Pyro handlers) run with that
    module's parameters detached: outputs still depend on the inputs, but no gradient reaches
    the parameters."""
    module = _owner(fn)
    if module is None:
        raise ValueError("DReG, STL and PIWAE gradients need the guide to be a method of an nn.Module "
                         "(pvae.fit wraps plain functions with their modules for you)")
    caller = _Call(module)

    def run(*args, **kwargs):
        params = {f"module.{n}": p.detach() for n, p in module.named_parameters()}
        return torch.func.functional_call(caller, params, (fn,) + args, kwargs)

    return run


class _SurrogateELBO(ImportanceWeightedELBO):
    r"""An importance-weighted bound whose gradient is given by per-particle weights.

    With log-weights l_i = f_theta(x, z_i) computed with the guide's parameters detached in
    log q (so phi reaches l_i only through the reparameterized z_i(phi)), the gradient is

    .. math:: \nabla_\theta = \sum_i a_i \nabla_\theta l_i, \qquad
              \nabla_\phi = \sum_i b_i \frac{\partial l_i}{\partial z_i}\frac{\partial z_i}{\partial \phi}
              \;[ - \sum_i b_i \nabla_\phi \log q_\phi(z_i|x) ]

    (the bracket only when ``path_only`` is False). One pass of the model: the surrogate is
    sum_i a_i l_i with each z_i entering model and guide through an identity whose backward
    multiplies by b_i / a_i. The loss *value* is :meth:`bound`.
    """

    path_only = True

    def log_weights_ab(self, log_w):  # pragma: no cover - abstract
        """``(log a, log b)``, each ``(k, batch)``, from detached log-weights."""
        raise NotImplementedError

    def per_datapoint(self, model, guide, *args, **kwargs):
        nesting = self._nesting(model, guide, args, kwargs)
        num_dims, k = nesting + 1, self.num_particles
        guide_sg = with_detached_params(guide)
        box = _Box()
        with pyro.plate("_pvae_particles", k, dim=-num_dims):
            guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
            scaled = guide_trace.copy()
            for name, site in _latent_sites(guide_trace):
                if not site["fn"].has_rsample:
                    raise ValueError(f"{type(self).__name__} needs reparameterized latents; site {name!r} is not")
                frame = next(f for f in site["cond_indep_stack"] if f.name == self.data_plate)
                view = [k] + [1] * (num_dims - 1) + [1] * (site["value"].dim() - num_dims)
                view[num_dims + frame.dim] = -1
                scaled.nodes[name] = dict(site, value=_GradScale.apply(site["value"], box, tuple(view)))
            model_trace = poutine.trace(poutine.replay(model, trace=scaled)).get_trace(*args, **kwargs)
            guide_sg_trace = poutine.trace(poutine.replay(guide_sg, trace=scaled)).get_trace(*args, **kwargs)
            if not self.path_only:
                fixed = guide_trace.copy()
                for name, site in _latent_sites(guide_trace):
                    fixed.nodes[name] = dict(site, value=site["value"].detach())
                direct_trace = poutine.trace(poutine.replay(guide, trace=fixed)).get_trace(*args, **kwargs)
        t = terms_from_traces(model_trace, guide_sg_trace, k, nesting, self.data_plate)
        beta = t.latent_scale / t.obs_scale
        log_w = t.log_px_z + beta * (t.log_pz - t.log_qz)
        value = self.bound(log_w.detach())
        log_a, log_b = self.log_weights_ab(log_w.detach())
        box.scale = torch.exp(log_b - log_a)
        surrogate = (log_a.exp() * log_w).sum(0)
        if not self.path_only:
            batch = log_w.shape[1]
            log_q = sum(_per_datapoint(site, num_dims, k, batch, self.data_plate)
                        for _, site in _latent_sites(direct_trace))
            surrogate = surrogate - beta * (log_b.exp() * log_q).sum(0)
        return value + surrogate - surrogate.detach(), t.obs_scale


class DReGIWAE(_SurrogateELBO):
    r"""IWAE with doubly reparameterized gradients (Tucker et al. 2018): the model gets the
    IWAE gradient sum_i w~_i grad l_i, the guide sum_i w~_i^2 (dl_i/dz_i)(dz_i/dphi), with
    w~ the normalized weights. Unbiased for the IWAE gradient, with a guide-gradient variance
    that does not blow up as k grows."""

    def log_weights_ab(self, log_w):
        log_nw = torch.log_softmax(log_w, dim=0)
        return log_nw, 2.0 * log_nw


class StickingTheLandingELBO(_SurrogateELBO):
    r"""The ELBO with k particles and the sticking-the-landing gradient (Roeder et al. 2017):
    the score term -grad_phi log q_phi(z) (zero in expectation) is dropped, so the guide's
    gradient variance vanishes as q reaches the exact posterior."""

    def bound(self, log_w):
        return log_w.mean(0)

    def log_weights_ab(self, log_w):
        c = torch.full_like(log_w, -math.log(log_w.shape[0]))
        return c, c


class PartialIWAE(_SurrogateELBO):
    r"""PIWAE (Rainforth et al. 2018): the model is trained on IWAE with M x K particles, the
    guide on MIWAE(M, K) from the same particles (its full reparameterized gradient). The loss
    value is the IWAE bound."""

    path_only = False

    def __init__(self, M: int = 8, K: int = 8, **kwargs):
        self.M, self.K = _groups("PIWAE", M, K)
        super().__init__(num_particles=self.M * self.K, **kwargs)

    def log_weights_ab(self, log_w):
        log_a = torch.log_softmax(log_w, dim=0)
        g = log_w.reshape(self.M, self.K, -1)
        log_b = (torch.log_softmax(g, dim=1) - math.log(self.M)).reshape(log_w.shape)
        return log_a, log_b


class PyroRenyiELBO(RenyiELBO):
    """Pyro's ``RenyiELBO``, unchanged in value, plus the ``differentiable_loss`` it lacks, so that
    pvae's trainer can run it as a cross-check. Its semantics are Pyro's: scales inside the
    logsumexp, and one joint bound for the batch when any site is outside the data plate."""

    def differentiable_loss(self, model, guide, *args, **kwargs):
        particles = []
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            sum_dims = get_dependent_plate_dims(model_trace.nodes.values())
            e = 0.0
            for site in model_trace.nodes.values():
                if site["type"] == "sample":
                    e = e + torch_sum(site["log_prob"], sum_dims)
            for name, site in guide_trace.nodes.items():
                if site["type"] == "sample":
                    if not site["is_observed"] and not site["fn"].has_rsample:
                        raise ValueError(f"pyro-renyi's differentiable_loss needs reparameterized latents; "
                                         f"site {name!r} is not")
                    e = e - torch_sum(site["log_prob"], sum_dims)
            particles.append(e)
        vectorized = self.vectorize_particles and self.num_particles > 1
        elbo_particles = particles[0] if vectorized else torch.stack(particles)
        a = 1.0 - self.alpha
        log_mean_weight = torch.logsumexp(a * elbo_particles, dim=0) - math.log(self.num_particles)
        return -log_mean_weight.sum() / a


def check_mean_field(elbo: ELBO, pair, *args, **kwargs) -> None:
    """``TraceMeanField_ELBO`` silently falls back to Monte Carlo where no closed-form KL is
    registered, and is wrong for a guide whose dependency structure differs from the model's
    (a bottom-up hierarchy). Say so instead."""
    if not isinstance(elbo, TraceMeanField_ELBO):
        return
    if getattr(pair, "mean_field_valid", True) is False:
        raise ValueError(f"mf-elbo is not valid for {type(pair).__name__} with this guide: the guide's latents "
                         "depend on each other in another order than the model's; use 'elbo' or an "
                         "importance-weighted objective")
    model_trace, guide_trace = _plain_traces(pair.model, pair.guide, *args, **kwargs)
    for name, site in _latent_sites(guide_trace):
        q, p = site["fn"], model_trace.nodes[name]["fn"]
        try:
            torch.distributions.kl_divergence(q, p)
        except NotImplementedError:
            raise ValueError(f"mf-elbo needs a closed-form KL(q || p) for site {name!r} and none is registered "
                             f"for {type(q).__name__} against {type(p).__name__}; use 'elbo' (Monte Carlo)") from None


def check_reparameterized(elbo: ELBO, pair, *args, **kwargs) -> None:
    """pvae's importance-weighted objectives differentiate through reparameterized draws only (no
    score-function term): a discrete latent in the guide would silently get no gradient. Refuse."""
    if not isinstance(elbo, ImportanceWeightedELBO):
        return
    _, guide_trace = _plain_traces(pair.model, pair.guide, *args, **kwargs)
    for name, site in _latent_sites(guide_trace):
        if not site["fn"].has_rsample:
            raise ValueError(f"{type(elbo).__name__} needs reparameterized latents, and the guide's site {name!r} "
                             f"({type(site['fn']).__name__}) is not: train with 'elbo' or 'enum-elbo' (pvae's "
                             "evaluator still estimates its log p(x))")


def set_plate_nesting(elbo: ELBO, nesting: int) -> None:
    """Tell an ELBO how many plate dims the model uses, where it would otherwise guess."""
    if isinstance(elbo, ImportanceWeightedELBO):
        if elbo.plate_nesting == float("inf"):
            elbo.plate_nesting = nesting
    elif getattr(elbo, "max_plate_nesting", None) == float("inf"):
        # Pyro counts the vectorized particle dim in max_plate_nesting
        elbo.max_plate_nesting = nesting + (1 if elbo.vectorize_particles else 0)


OBJECTIVES = {
    "elbo": "Trace_ELBO: E_q[log p(x,z) - log q(z|x)], Monte Carlo with k particles",
    "mf-elbo": "TraceMeanField_ELBO: reconstruction by Monte Carlo, KL in closed form",
    "enum-elbo": "TraceEnum_ELBO: the ELBO with the guide's discrete sites summed out exactly (M2's labels)",
    "iwae": "importance-weighted bound with k samples (pvae's per-datapoint ELBO)",
    "iwae-dreg": "IWAE bound, doubly reparameterized gradients (Tucker et al. 2018)",
    "stl": "ELBO with k particles, sticking-the-landing gradients (Roeder et al. 2017)",
    "renyi": "Rényi-alpha bound with k samples, alpha != 1 (pvae's per-datapoint ELBO)",
    "miwae": "mean of M independent K-sample IWAE bounds (Rainforth et al. 2018); k = M x K",
    "ciwae": "beta ELBO + (1 - beta) IWAE from the same k samples (Rainforth et al. 2018)",
    "piwae": "IWAE(M x K) for the model, MIWAE(M, K) for the guide (Rainforth et al. 2018)",
    "pyro-renyi": "Pyro's own RenyiELBO (scales inside the logsumexp), for cross-checks",
}


SPEC_KEYS = {"k": int, "alpha": float, "M": int, "beta": float}


def parse_spec(spec: str) -> tuple[str, dict]:
    """``"iwae:k=50"`` or ``"renyi:k=5,alpha=0.5"`` -> ``("iwae", {"k": 50})``; a bare name has no
    parameters. Keys: k, alpha (renyi), M (miwae, piwae), beta (ciwae)."""
    name, _, rest = spec.partition(":")
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; choose one of {sorted(OBJECTIVES)}")
    params = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or key not in SPEC_KEYS:
            raise ValueError(f"bad objective spec {spec!r}: write NAME:key=value,... with keys {list(SPEC_KEYS)}")
        try:
            params[key] = SPEC_KEYS[key](value)
        except ValueError:
            raise ValueError(f"bad objective spec {spec!r}: {key}={value!r} is not a number") from None
    return name, params


def objective(name: str = "elbo", k: int = 1, alpha: float = 0.5, *, M: int | None = None,
              beta: float = 0.5, **kwargs) -> ELBO:
    """The Pyro ELBO instance behind an objective name.

    >>> pvae.objective("iwae", k=5).loss(m.model, m.guide, x)  # doctest: +SKIP
    >>> pvae.objective("renyi:k=5,alpha=0.5")                   # the same as a spec string


    ``k`` is the number of particles (samples of z per datapoint), drawn in one vectorized
    pass. ``alpha`` is used by ``"renyi"`` and ``"pyro-renyi"``; ``beta`` by ``"ciwae"``; ``M``
    (groups; K = k / M, default M = K = sqrt(k)) by ``"miwae"`` and ``"piwae"``. Extra keyword
    arguments go to the ELBO.
    """
    name, spec = parse_spec(name)
    k, alpha, M, beta = spec.get("k", k), spec.get("alpha", alpha), spec.get("M", M), spec.get("beta", beta)
    if int(k) != k or k < 1:
        raise ValueError(f"the number of samples k must be an integer >= 1, got {k}")
    k = int(k)
    if name in ("elbo", "mf-elbo", "enum-elbo"):
        cls = {"elbo": Trace_ELBO, "mf-elbo": TraceMeanField_ELBO, "enum-elbo": TraceEnum_ELBO}[name]
        return cls(num_particles=k, vectorize_particles=k > 1, **kwargs)
    if name in ("iwae", "renyi"):
        return ImportanceWeightedELBO(num_particles=k, alpha=0.0 if name == "iwae" else alpha, **kwargs)
    if name == "iwae-dreg":
        return DReGIWAE(num_particles=k, **kwargs)
    if name == "stl":
        return StickingTheLandingELBO(num_particles=k, **kwargs)
    if name == "ciwae":
        return CombinationIWAE(num_particles=k, beta=beta, **kwargs)
    if name == "pyro-renyi":
        if alpha == 1:
            raise ValueError("alpha = 1 is the ELBO's limit, not a Rényi bound: use objective 'elbo'")
        return PyroRenyiELBO(alpha=alpha, num_particles=k, vectorize_particles=True, **kwargs)
    M = int(M) if M is not None else max(1, math.isqrt(k))
    if k % M:
        raise ValueError(f"{name} splits k = {k} samples into M = {M} groups: k must be a multiple of M")
    cls = MultiImportanceWeightedELBO if name == "miwae" else PartialIWAE
    return cls(M=M, K=k // M, **kwargs)
