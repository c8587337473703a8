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
gives one weight per *batch*. [`pvae.program.log_weight_terms`][pvae.program.log_weight_terms] keeps one per datapoint:
it finds the plate over datapoints (named anything), draws particles in one vectorized pass
along a dim left of all plates (or one trace each where the program's nets cannot take that
dim), and sums log-probs over every dim except (particle, data). See [`pvae.program`][pvae.program].
"""

from __future__ import annotations

import math
import warnings

import pyro
import torch
from pyro import poutine
from torch import nn
from pyro.infer import ELBO, RenyiELBO, Trace_ELBO, TraceEnum_ELBO, TraceMeanField_ELBO
from pyro.infer.enum import get_importance_trace
from pyro.infer.util import get_dependent_plate_dims, torch_sum

from .program import (PARTICLES, LogWeightTerms, Program, _per_datapoint, analyse, forked_rng, go_sequential,  # noqa: F401
                      latent_sites, log_weight_terms, plain_traces, terms_from_traces)
from .validate import check_number, check_positive_int

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
    change `bound` (MIWAE, CIWAE) or the gradient estimator (DReG, STL, PIWAE).
    """

    def __init__(self, num_particles: int = 5, alpha: float = 0.0, max_plate_nesting=float("inf"),
                 data_plate: str | None = None):
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
        self.program: Program | None = None  # what pvae.fit's analysis found, else found on first use

    def _get_trace(self, model, guide, args, kwargs):
        """One (model, guide) trace pair, as Pyro's ELBO base class expects."""
        return get_importance_trace("flat", self._nesting(model, guide, args, kwargs), model, guide, args, kwargs)

    def _program(self, model, guide, args, kwargs) -> Program:
        if self.program is None:
            self.program = analyse(model, guide, args, kwargs, data_plate=self.data_plate, check_vectorize=False)
            check_importance_weighted(self, self.program)
        if self.plate_nesting != float("inf"):
            self.program.nesting = int(self.plate_nesting)
        return self.program

    def _nesting(self, model, guide, args, kwargs) -> int:
        return self._program(model, guide, args, kwargs).nesting

    def bound(self, log_w: torch.Tensor) -> torch.Tensor:
        """The per-datapoint bound from scaled log-weights of shape ``(k, batch)``."""
        a = 1.0 - self.alpha
        return (torch.logsumexp(a * log_w, dim=0) - math.log(log_w.shape[0])) / a

    def _scales(self, t: LogWeightTerms) -> tuple[float, float]:
        if t.latent_scale is None or t.obs_scale is None:
            raise ValueError(f"{type(self).__name__} needs one poutine.scale on all observed sites and one on all "
                             "latent sites (a beta or warm-up on every latent of model and guide alike); this "
                             "program scales its sites differently or per datapoint, and an importance-weighted "
                             "bound has no such weighting: train with 'elbo' (Trace_ELBO honours every scale)")
        return t.latent_scale, t.obs_scale

    def per_datapoint(self, model, guide, *args, **kwargs):
        """``(L, s)``: the bound L_b of each datapoint (shape ``(batch,)``) and the outer scale s."""
        program = self._program(model, guide, args, kwargs)
        try:
            t = log_weight_terms(model, guide, *args, num_particles=self.num_particles, program=program,
                                 complete=False, **kwargs)
        except Exception as e:  # noqa: BLE001 - first use outside pvae.fit: nets that take no particle dim
            if program.checked or not program.vectorize:
                raise
            go_sequential(program, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            t = log_weight_terms(model, guide, *args, num_particles=self.num_particles, program=program,
                                 complete=False, **kwargs)
        program.checked = True
        latent_scale, obs_scale = self._scales(t)
        beta = latent_scale / obs_scale
        return self.bound(t.log_px_z + beta * (t.log_pz - t.log_qz)), obs_scale

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
    multiplies by b_i / a_i. The loss *value* is `bound`.
    """

    path_only = True

    def log_weights_ab(self, log_w):  # pragma: no cover - abstract
        """``(log a, log b)``, each ``(k, batch)``, from detached log-weights."""
        raise NotImplementedError

    def per_datapoint(self, model, guide, *args, **kwargs):
        program = self._program(model, guide, args, kwargs)
        nesting, plate = program.nesting, program.data_plate
        num_dims, k = nesting + 1, self.num_particles
        guide_sg = with_detached_params(guide)
        box = _Box()
        with pyro.plate(PARTICLES, k, dim=-num_dims):
            guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
            scaled = guide_trace.copy()
            for name, site in latent_sites(guide_trace):
                if not site["fn"].has_rsample:
                    raise ValueError(f"{type(self).__name__} needs reparameterized latents; site {name!r} is not")
                frame = next(f for f in site["cond_indep_stack"] if f.name == plate)
                view = [k] + [1] * (num_dims - 1) + [1] * (site["value"].dim() - num_dims)
                view[num_dims + frame.dim] = -1
                scaled.nodes[name] = dict(site, value=_GradScale.apply(site["value"], box, tuple(view)))
            model_trace = poutine.trace(poutine.replay(model, trace=scaled)).get_trace(*args, **kwargs)
            guide_sg_trace = poutine.trace(poutine.replay(guide_sg, trace=scaled)).get_trace(*args, **kwargs)
            if not self.path_only:
                fixed = guide_trace.copy()
                for name, site in latent_sites(guide_trace):
                    fixed.nodes[name] = dict(site, value=site["value"].detach())
                direct_trace = poutine.trace(poutine.replay(guide, trace=fixed)).get_trace(*args, **kwargs)
        t = terms_from_traces(model_trace, guide_sg_trace, k, nesting, plate, complete=False)
        latent_scale, obs_scale = self._scales(t)
        beta = latent_scale / obs_scale
        log_w = t.log_px_z + beta * (t.log_pz - t.log_qz)
        value = self.bound(log_w.detach())
        log_a, log_b = self.log_weights_ab(log_w.detach())
        box.scale = torch.exp(log_b - log_a)
        surrogate = (log_a.exp() * log_w).sum(0)
        if not self.path_only:
            batch = log_w.shape[1]
            log_q = sum(_per_datapoint(site, num_dims, plate).expand(k, batch)
                        for _, site in latent_sites(direct_trace))
            surrogate = surrogate - beta * (log_b.exp() * log_q).sum(0)
        return value + surrogate - surrogate.detach(), obs_scale


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
    registered, is wrong for a guide whose dependency structure differs from the model's (a
    bottom-up hierarchy), and gives a non-reparameterized (discrete) guide site only the KL's
    gradient. Say so instead."""
    if not isinstance(elbo, TraceMeanField_ELBO):
        return
    if getattr(pair, "mean_field_valid", True) is False:
        raise ValueError(f"mf-elbo is not valid for {type(pair).__name__} with this guide: the guide's latents "
                         "depend on each other in another order than the model's; use 'elbo' or an "
                         "importance-weighted objective")
    model_trace, guide_trace = plain_traces(pair.model, pair.guide, *args, **kwargs)
    for name, site in latent_sites(guide_trace):
        q = site["fn"]
        if not q.has_rsample:
            raise ValueError(f"mf-elbo needs reparameterized guide sites, and site {name!r} ({type(q).__name__}) is "
                             "not: its gradient would miss the score-function term; use 'elbo' (or 'enum-elbo' "
                             "with the site marked for enumeration)")
        if name not in model_trace.nodes:
            continue
        p = model_trace.nodes[name]["fn"]
        try:
            torch.distributions.kl_divergence(q, p)
        except NotImplementedError:
            raise ValueError(f"mf-elbo needs a closed-form KL(q || p) for site {name!r} and none is registered "
                             f"for {type(q).__name__} against {type(p).__name__}; use 'elbo' (Monte Carlo)") from None


def check_importance_weighted(elbo: ELBO, program: Program) -> None:
    """pvae's importance-weighted objectives are per-datapoint bounds differentiated through
    reparameterized draws: refuse global latents, non-reparameterized guide sites (which would
    silently get no gradient) and, for the surrogate estimators, sequential particles."""
    if not isinstance(elbo, ImportanceWeightedELBO):
        return
    name = type(elbo).__name__
    if program.global_sites:
        raise ValueError(f"{name} is a per-datapoint bound, and latent site {program.global_sites[0]!r} is outside "
                         f"the data plate {program.data_plate!r} (a global latent): train with 'elbo', 'mf-elbo' "
                         "or 'enum-elbo', which handle global latents (pvae's evaluator conditions on their guide mean)")
    if program.not_reparameterized:
        raise ValueError(f"{name} needs reparameterized latents, and the guide's site "
                         f"{program.not_reparameterized[0]!r} is not: train with 'elbo' or 'enum-elbo' (pvae's "
                         "evaluator still estimates its log p(x))")
    if isinstance(elbo, _SurrogateELBO) and not program.vectorize:
        raise ValueError(f"{name} needs nets that take a leading particle dim, and this program's do not "
                         "(see the warning above): use 'iwae' or 'elbo'")


def check_objective(elbo: ELBO, pair, program: Program, args=(), kwargs=None) -> None:
    """Every guard pvae keeps for an objective on a program, run once before any training step
    (Pyro's own guards vanish with validation off)."""
    kwargs = kwargs or {}
    # obs_mask's x_unobserved are by design; sites the model enumerates are summed out by TraceEnum_ELBO
    unmatched = [n for n in program.prior_sites if not n.endswith("_unobserved")
                 and not (n in program.model_enumerated and isinstance(elbo, TraceEnum_ELBO))]
    if unmatched:
        raise ValueError(f"latent site {unmatched[0]!r} of the model has no match in the guide (does its pyro.sample "
                         "lack obs=?): it would be drawn from its prior and never inferred; observe it or add it to "
                         "the guide")
    if program.guide_only:
        raise ValueError(f"the guide samples {program.guide_only[0]!r}, which the model does not: every latent "
                         "site of the guide must be a site of the model")
    check_mean_field(elbo, pair, *args, **kwargs)
    check_importance_weighted(elbo, program)
    if isinstance(elbo, ImportanceWeightedELBO):
        with poutine.block(), torch.no_grad(), forked_rng():
            elbo._scales(log_weight_terms(pair.model, pair.guide, *args, program=program, complete=False, **kwargs))
    if isinstance(elbo, TraceEnum_ELBO) and not program.enumerated:
        warnings.warn("enum-elbo (TraceEnum_ELBO) on a program with no site marked for enumeration "
                      "(infer={'enumerate': 'parallel'} or config_enumerate) is the plain ELBO", stacklevel=3)


def configure(elbo: ELBO, program: Program) -> None:
    """Tell an ELBO what the analysis of the program found: plate dims, the data plate, and
    whether particles can be vectorized."""
    if isinstance(elbo, ImportanceWeightedELBO):
        if elbo.plate_nesting != float("inf"):
            program.nesting = int(elbo.plate_nesting)
        elbo.program = program
        return
    if not program.vectorize and getattr(elbo, "vectorize_particles", False):
        elbo.vectorize_particles = False
    if getattr(elbo, "max_plate_nesting", None) == float("inf"):
        # Pyro counts the vectorized particle dim in max_plate_nesting
        elbo.max_plate_nesting = program.nesting + (1 if getattr(elbo, "vectorize_particles", False) else 0)


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


def _count(value: str) -> int:
    if not value.strip().lstrip("+-").isdigit():
        raise ValueError(value)
    return int(value)


SPEC_KEYS = {"k": _count, "alpha": float, "M": _count, "beta": float}


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
            kind = "an integer" if SPEC_KEYS[key] is _count else "a number"
            raise ValueError(f"bad objective spec {spec!r}: {key}={value!r} is not {kind}") from None
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
    k = check_positive_int("the number of samples k", k)
    alpha, beta = check_number("alpha", alpha), check_number("beta", beta)
    if M is not None:
        M = check_positive_int("M (the number of groups)", M)
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
