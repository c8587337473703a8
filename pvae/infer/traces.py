r"""Per-datapoint log-densities from traces of a model/guide pair.

For a batch and k particles, one tensor of shape (k, batch) per term:

.. math:: \log w_{ib} = \log p(x_b | z_i) + \log p(z_i) - \log q(z_i | x_b)

summed over every dim of a site except (particle, datapoint), unscaled (``poutine.scale`` is a
training device), masks honoured. Particles come in one vectorized pass along a dim left of all
plates, or one trace each where the program's nets cannot take that dim.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from pvae.infer.sites import (
    PARTICLES,
    LogWeightTerms,
    ParticleShapeError,
    Program,
    forked_rng,
    is_counted,
    latent_sites,
    outside_error,
)

# -- sites and plates -----------------------------------------------------------------------

#: set while pvae.infer.compiled records a step: data-dependent checks are skipped (the recorded step is
#: then compared with an eager one, bit for bit)
TRACING = False


# -- per-datapoint log-densities ------------------------------------------------------------

def _per_datapoint(site, num_dims: int, data_plate: str, particle: bool = True) -> torch.Tensor:
    """Sum a site's (unscaled, masked) log-prob over every dim but (particle, data) -> ``(k|1, b|1)``."""
    frames = [f for f in site["cond_indep_stack"] if f.name == data_plate]
    if not frames:
        raise outside_error(site, data_plate)
    lp = site["fn"].log_prob(site["value"])
    value = site["value"]
    if isinstance(value, torch.Tensor) and lp.device != value.device:
        lp = lp.to(value.device)  # Pyro's ImproperUniform (AE, VQ-VAE priors) answers on the CPU whatever the value
    mask = site["mask"]
    if mask is not None and mask is not True:
        lp = torch.where(torch.as_tensor(mask, device=lp.device), lp, lp.new_zeros(()))
    dims = num_dims if particle else num_dims - 1
    if lp.dim() > dims:
        raise ParticleShapeError(
            f"site {site['name']!r} has batch shape {tuple(lp.shape)}, more dims than its plates"
            f"{' and the particle dim' if particle else ''} ({dims}): declare per-datapoint dims with .to_event(...)")
    lp = lp.reshape((1,) * (dims - lp.dim()) + tuple(lp.shape))
    if not particle:
        lp = lp.unsqueeze(0)
    data_dim = num_dims + frames[0].dim
    other = [d for d in range(1, num_dims) if d != data_dim]
    if other:
        lp = lp.sum(other, keepdim=True)
    return lp.reshape(lp.shape[0], lp.shape[data_dim])


def _scale_value(site):
    s = site["scale"]
    if isinstance(s, torch.Tensor):
        return float(s) if s.numel() == 1 else None
    return float(s)


def terms_from_traces(model_trace, guide_trace, num_particles: int, max_plate_nesting: int,
                      data_plate: str, skip=(), particle: bool = True, complete: bool = True) -> LogWeightTerms:
    """Per-datapoint log p(x|z), log p(z), log q(z|x) (each ``(k, batch)``) from a model trace
    replayed against a guide trace; sites in ``skip`` (global latents held fixed) count nothing,
    and a latent of the model that the guide lacks was drawn from its prior and cancels."""
    num_dims, k = max_plate_nesting + 1, num_particles
    parts = {"px": [], "pz": [], "qz": []}
    latent_scales, obs_scales = set(), set()
    sizes = {}
    for name, site in model_trace.nodes.items():
        if not is_counted(site) or name in skip:
            continue
        if not site["is_observed"] and name not in guide_trace.nodes:
            continue  # drawn from the prior by replay: p / p = 1
        lp = _per_datapoint(site, num_dims, data_plate, particle)
        sizes[name] = lp.shape[1]
        parts["px" if site["is_observed"] else "pz"].append(lp)
        (obs_scales if site["is_observed"] else latent_scales).add(_scale_value(site))
    for name, site in latent_sites(guide_trace):
        if name in skip:
            continue
        lp = _per_datapoint(site, num_dims, data_plate, particle)
        sizes[name] = lp.shape[1]
        parts["qz"].append(lp)
        latent_scales.add(_scale_value(site))
    batch = max(sizes.values(), default=1)
    wrong = {n: b for n, b in sizes.items() if b not in (1, batch)}
    if wrong:
        raise ParticleShapeError(f"sites disagree on the number of datapoints along plate {data_plate!r}: "
                         f"{dict(sizes)}")
    ref = next((p[0] for p in parts.values() if p), None)
    zero = (ref.new_zeros(()) if ref is not None else torch.zeros(())).expand(k, batch)
    order = _subsample_order(guide_trace, model_trace, data_plate, batch, complete)

    def total(lps):
        t = sum(lps[1:], lps[0]).expand(k, batch) if lps else zero
        return t if order is None else t[:, order]

    def one(scales):
        return scales.pop() if len(scales) == 1 and None not in scales else (1.0 if not scales else None)

    return LogWeightTerms(total(parts["px"]), total(parts["pz"]), total(parts["qz"]),
                          one(latent_scales), one(obs_scales))


def _subsample_order(guide_trace, model_trace, data_plate: str, batch: int, complete: bool = True):
    """Where the program subsamples its data plate itself (``subsample_size=``, ``subsample=``),
    the permutation that puts the per-datapoint terms back in the order of the data; an error
    when the subsample leaves datapoints out (a per-datapoint result must score each once)."""
    site = next((tr.nodes[data_plate] for tr in (guide_trace, model_trace)
                 if data_plate in tr.nodes and site_is_subsample(tr.nodes[data_plate])), None)
    if site is None:
        return None
    ind = site["value"]
    full = site["fn"].size if hasattr(site["fn"], "size") else None
    if ind is None or ind.dim() != 1 or ind.numel() != batch:
        return None
    if full is not None and full != batch:
        if not complete:  # training: a subsample is what the program asks for (its plate scales it)
            return None
        raise ValueError(f"the program subsamples plate {data_plate!r} itself ({batch} of {full} datapoints a "
                         "call): per-datapoint bounds and log p(x) need every datapoint of a batch scored once; "
                         f"give pvae the batches (batch_size=...) and let the plate run over all of them")
    if TRACING:  # recording a compiled step: the eager step it must match already took this branch
        return None
    if torch.equal(ind, torch.arange(batch, device=ind.device)):
        return None
    return torch.argsort(ind)


def vectorized_traces(model, guide, *args, num_particles: int, max_plate_nesting: int, fixed=None, **kwargs):
    """``(model_trace, guide_trace)`` with ``num_particles`` draws of every latent, taken in one
    pass along a particle dim to the left of all plates; ``fixed`` (a trace) holds sites fixed."""
    if fixed is not None:
        guide = poutine.replay(guide, trace=fixed)
    with pyro.plate(PARTICLES, num_particles, dim=-(max_plate_nesting + 1)):
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    return model_trace, guide_trace


def single_traces(model, guide, *args, fixed=None, **kwargs):
    """One particle, no particle dim: the program exactly as Pyro's SVI runs it."""
    if fixed is not None:
        guide = poutine.replay(guide, trace=fixed)
    guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    return model_trace, guide_trace


def fold(a, k: int):
    """A batch argument repeated k times along its rows, particle-major ([x; x; ...]); other
    arguments as they are."""
    return a.repeat((k,) + (1,) * (a.dim() - 1)) if isinstance(a, torch.Tensor) and a.dim() else a


def folded_traces(model, guide, *args, num_particles: int, fixed=None, **kwargs):
    """k particles of a program whose nets take no particle dim, *folded into the batch*: every
    datapoint repeated k times (particle-major), one plain trace. With the nets in eval mode the
    datapoints do not interact, so row j * B + i is particle j of datapoint i."""
    k = num_particles
    return single_traces(model, guide, *(fold(a, k) for a in args), fixed=fixed,
                         **{n: fold(v, k) for n, v in kwargs.items()})


def fix_globals(guide, program: Program, *args, **kwargs):
    """A trace holding each global latent of ``program`` at its guide mean (a draw average where
    the guide distribution has no closed-form mean), for `log_weight_terms`'s ``fixed``;
    None when the program has no global latents."""
    if not program.global_sites:
        return None
    with poutine.block(), forked_rng(), torch.no_grad():
        tr = poutine.trace(guide).get_trace(*args, **kwargs)
        means = poutine.Trace()
        for name in program.global_sites:
            site = tr.nodes[name]
            if isinstance(site["fn"], dist.Delta):
                continue  # a function of other sites (an autoguide's constrained value): recomputed below
            try:
                value = site["fn"].mean
                if not torch.isfinite(value).all():
                    raise NotImplementedError
            except NotImplementedError:
                value = site["fn"].sample((1000,)).mean(0)
            means.add_node(name, **dict(site, value=value.to(site["value"].dtype)))
        tr = poutine.trace(poutine.replay(guide, trace=means)).get_trace(*args, **kwargs)
        fixed = poutine.Trace()
        for name in program.global_sites:
            fixed.add_node(name, **tr.nodes[name])
    return fixed
