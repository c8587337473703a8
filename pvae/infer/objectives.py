r"""Inference objectives by name (`objective`, `OBJECTIVES`): Pyro's ELBOs and pvae's per-datapoint
importance-weighted bounds, and the checks that refuse a program an objective cannot bound.

For one datapoint x and k draws z_1..z_k ~ q(z|x), the *log-weights* are

.. math:: \log w_i = \log p(x, z_i) - \log q(z_i | x),

and every bound here is a function of them:

- ELBO:  L_1 = E_q[\log w]  (``"elbo"``: Pyro's ``Trace_ELBO``; ``"mf-elbo"``:
  ``TraceMeanField_ELBO``, the KL term in closed form where one is registered);
- IWAE (Burda et al. 2016):  L_k = E[\log \frac{1}{k} \sum_i w_i] <= \log p(x), increasing in k;
- Rényi-alpha (Li & Turner 2016):  L_alpha = \frac{1}{1-\alpha} E[\log \frac{1}{k}\sum_i w_i^{1-\alpha}]
  (alpha = 0 is IWAE; alpha -> 1 the ELBO).

Pyro's ``vectorized_importance_weights`` sums the log-weights over the data plate, so it
gives one weight per *batch*. [`pvae.infer.program.log_weight_terms`][pvae.infer.program.log_weight_terms] keeps one per datapoint:
it finds the plate over datapoints (named anything), draws particles in one vectorized pass
along a dim left of all plates (or one trace each where the program's nets cannot take that
dim), and sums log-probs over every dim except (particle, data). See [`pvae.infer.program`][pvae.infer.program].
"""

from __future__ import annotations

import math
import warnings

import torch
from pyro import poutine
from pyro.infer import ELBO, Trace_ELBO, TraceEnum_ELBO, TraceMeanField_ELBO

from pvae.infer.iwae import (
    CombinationIWAE,
    ImportanceWeightedELBO,
    MultiImportanceWeightedELBO,
)
from pvae.infer.program import log_weight_terms
from pvae.infer.renyi import PyroRenyiELBO
from pvae.infer.sites import Program, forked_rng, latent_sites, plain_traces
from pvae.infer.surrogate import (
    DReGIWAE,
    PartialIWAE,
    StickingTheLandingELBO,
)
from pvae.util.validate import check_number, check_positive_int


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
    reparameterized draws: each one's ``check`` refuses the programs it cannot bound."""
    if isinstance(elbo, ImportanceWeightedELBO):
        elbo.check(program)


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
