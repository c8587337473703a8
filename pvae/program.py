r"""Reading a Pyro program: per-datapoint log-densities of any model/guide pair, as Pyro users
write them.

pvae's bounds and its evaluator need, for one datapoint x_b and draws z_1..z_k ~ q(z|x_b),

.. math:: \log w_{ib} = \log p(x_b | z_i) + \log p(z_i) - \log q(z_i | x_b),

one number per particle and datapoint, where Pyro's own ``vectorized_importance_weights`` sums
over the batch. `analyse` traces a program once, on its first batch, and finds what that
takes (NumPyro's ``log_density`` traces once in the same spirit):

- **the data plate**: the ``pyro.plate`` that runs over the datapoints, named anything, sized,
  sizeless (``pyro.plate("data")``) or subsampled; the plate around every observed site whose
  size is the batch's. ``data_plate=`` names it where that is ambiguous;
- **the plate nesting**: how many plate dims the program uses (particles go to the left);
- **vectorized or sequential particles**: a program whose nets take an extra leading particle
  dim gets k particles in one pass; one whose nets cannot (BatchNorm on a 2-d batch,
  ``x.reshape(-1, 784)``, ``.view(batch, ...)``) fails on a trial or gives other log-weights
  than one particle at a time, and then gets one trace per particle, as Pyro's non-vectorized
  ``Trace_ELBO`` does;
- **global latents**: latent sites outside the data plate (a shared noise scale, priors on
  weights). Pyro's ELBOs train them; per-datapoint evaluation conditions on a point estimate
  from the guide (its mean) and says so;
- **scales**: ``poutine.scale`` (beta, KL annealing, minibatch N/B) is a training device;
  log-densities here are unscaled, and evaluation says once that scales were left out.

Masks (``poutine.mask``, ``obs_mask=``, ``.mask()``) zero the masked entries' log-densities;
``pyro.factor`` sites count as observed; ``pyro.deterministic`` sites count nothing. A latent
site of the model that the guide lacks (``obs_mask``'s ``x_unobserved``) is drawn from its prior,
as Pyro's replay does, and its density cancels in the weight.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import NamedTuple

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

PARTICLES = "_pvae_particles"
DATA_PLATE = "data"  # the name pvae's own models give their data plate


class ParticleShapeError(ValueError):
    """Log-densities whose shapes do not fit the plates: in a vectorized pass, the sign of nets
    that fold the particle dim into the batch (then pvae goes sequential)."""


class LogWeightTerms(NamedTuple):
    """Per-datapoint log-densities of k particles, each of shape ``(k, batch)``.

    ``log_px_z``: observed sites, log p(x | z); ``log_pz``: latent sites of the model, log p(z);
    ``log_qz``: the guide, log q(z | x). ``latent_scale`` / ``obs_scale`` are the
    ``poutine.scale`` factors found on those sites (None where they differ between sites or
    vary per datapoint); the log-densities themselves are unscaled.
    """

    log_px_z: torch.Tensor
    log_pz: torch.Tensor
    log_qz: torch.Tensor
    latent_scale: float | None
    obs_scale: float | None

    @property
    def log_weights(self):
        """log w = log p(x, z) - log q(z | x), unscaled: the true importance weights."""
        return self.log_px_z + self.log_pz - self.log_qz


@dataclass
class Program:
    """What one trace of a model/guide pair says about it (see the module docstring)."""

    data_plate: str
    nesting: int
    vectorize: bool = True
    global_sites: tuple = ()
    scaled_sites: tuple = ()
    prior_sites: tuple = ()
    guide_only: tuple = ()
    auxiliary: tuple = ()
    model_enumerated: tuple = ()  # discrete sites of the model only, summed out by TraceEnum_ELBO
    enumerated: bool = False
    not_reparameterized: tuple = ()
    notes: list = field(default_factory=list)
    checked: bool = False  # whether vectorization was tried (or the program is pvae's own)

    def eval_notes(self) -> list:
        """What every evaluation result of this program should say about how it was computed."""
        out = []
        shown = [n for n in self.global_sites if n not in self.auxiliary]
        if shown:
            out.append(f"global latents {shown} fixed at their guide mean for per-datapoint "
                       "evaluation (log p(x | global point estimate))")
        if self.scaled_sites:
            out.append(f"training scales on {list(self.scaled_sites)} ignored for evaluation")
        if not self.vectorize:
            out.append("particles drawn sequentially (the program's nets take no particle dim)")
        return out


# -- sites and plates -----------------------------------------------------------------------

#: set while pvae.compiled records a step: data-dependent checks are skipped (the recorded step is
#: then compared with an eager one, bit for bit)
TRACING = False

def is_counted(site) -> bool:
    """A sample site that carries a log-density: not a plate's subsample site, not deterministic."""
    return (site["type"] == "sample" and not site_is_subsample(site)
            and not site["infer"].get("_deterministic", False))


def latent_sites(trace):
    return [(name, site) for name, site in trace.nodes.items() if is_counted(site) and not site["is_observed"]]


def _plates(site):
    return [f for f in site["cond_indep_stack"] if f.name != PARTICLES]


def where(site) -> str:
    names = [f.name for f in _plates(site)]
    return f"in plate {names[0]!r}" if len(names) == 1 else f"in plates {names}" if names else "in no plate"


def outside_error(site, data_plate: str) -> ValueError:
    return ValueError(f"sample site {site['name']!r} is outside the data plate {data_plate!r} ({where(site)}): "
                      "pvae computes per-datapoint bounds, so every sample site of a datapoint must sit inside that plate")


def in_plate(site, data_plate: str) -> bool:
    return any(f.name == data_plate for f in site["cond_indep_stack"])


def forked_rng():
    """The random-number state (CPU, and the current CUDA device once used) restored on exit, so
    that pvae's looks at a program do not change later draws."""
    cuda = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    return torch.random.fork_rng(devices=cuda)


def plain_traces(model, guide, *args, **kwargs):
    """One run of guide and model, hidden from outer handlers, without gradients, and with the
    random-number state restored afterwards (so that looking does not change later draws)."""
    with poutine.block(), forked_rng(), torch.no_grad():
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    return model_trace, guide_trace


def find_data_plate(model_trace, guide_trace, batch: int | None, data_plate: str | None = None) -> str:
    """The plate that runs over the datapoints: ``data_plate`` if given (checked), else the plate
    around every observed site whose size is the batch's (or that has no size)."""
    sites = [s for tr in (model_trace, guide_trace) for s in tr.nodes.values() if is_counted(s)]
    names = list(dict.fromkeys(f.name for s in sites for f in _plates(s)))
    if data_plate is not None:
        if data_plate not in names:
            found = ", ".join(repr(n) for n in names) or "none"
            raise ValueError(f"data_plate={data_plate!r}: the program has no sample site in a plate of that name "
                             f"(plates found: {found})")
        return data_plate
    observed = [s for s in model_trace.nodes.values() if is_counted(s) and s["is_observed"]]
    if not observed:
        raise ValueError("the model has no observed sample site (pyro.sample(..., obs=x)): pvae needs the data "
                         "to be observed in the model")
    common = None
    for s in observed:
        frames = {f.name: f for f in _plates(s)}
        common = frames if common is None else {n: f for n, f in common.items() if n in frames}
    if not common:
        s = observed[0]
        raise ValueError(f"no plate is around every observed site (site {s['name']!r} is {where(s)}): wrap the "
                         "per-datapoint sites in pyro.plate(name, batch_size), or name the plate with data_plate=")
    sized = [f for f in common.values() if batch is not None and f.size in (batch, -1, None)]
    candidates = sized or list(common.values())
    if len(candidates) > 1:
        candidates = [f for f in candidates if f.size != -1] or candidates  # a sized match over sizeless ones
    if len(candidates) > 1:
        raise ValueError(f"plates {[f.name for f in candidates]} all run over the observed sites with the batch's "
                         "size: name the one over datapoints with data_plate=...")
    return candidates[0].name


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


def log_weight_terms(model, guide, *args, num_particles: int = 1, max_plate_nesting: int | None = None,
                     data_plate: str | None = None, program: Program | None = None, fixed=None,
                     complete: bool = True, **kwargs) -> LogWeightTerms:
    """Draw ``num_particles`` z ~ q(z|x) and return per-datapoint log p(x|z), log p(z) and
    log q(z|x), each of shape ``(num_particles, batch)``.

    ``model`` and ``guide`` take the same ``*args, **kwargs``. Particles are drawn in one
    vectorized pass, or one trace each where the program's nets cannot take a particle dim
    (``program.vectorize``; `analyse` finds out). The draws are reparameterized where the
    guide's distributions allow it, so the result is differentiable. ``fixed``: a trace of
    global latents held at point values (see `fix_globals`). ``complete``: every datapoint
    of the batch must be scored (evaluation); False allows a program that subsamples its data
    plate itself (training).
    """
    if program is None:
        program = analyse(model, guide, args, kwargs, data_plate=data_plate, check_vectorize=False)
        if max_plate_nesting is not None:
            program.nesting = max_plate_nesting
    skip = tuple(fixed.nodes) if fixed is not None else ()
    k, nesting = num_particles, program.nesting
    if program.vectorize:
        mt, gt = vectorized_traces(model, guide, *args, num_particles=k, max_plate_nesting=nesting, fixed=fixed,
                                   **kwargs)
        return terms_from_traces(mt, gt, k, nesting, program.data_plate, skip, complete=complete)
    terms = [terms_from_traces(*single_traces(model, guide, *args, fixed=fixed, **kwargs), 1, nesting,
                               program.data_plate, skip, particle=False, complete=complete) for _ in range(k)]
    return LogWeightTerms(*(torch.cat(t, 0) for t in zip(*(t[:3] for t in terms))),
                          terms[0].latent_scale, terms[0].obs_scale)


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


# -- analysis -------------------------------------------------------------------------------

def _particle(value: torch.Tensor, site, i: int, k: int, nesting: int) -> torch.Tensor:
    dim = value.dim() - len(site["fn"].event_shape) - (nesting + 1)
    if dim >= 0 and value.shape[dim] == k:
        return value.select(dim, i)
    return value


def _same_one_at_a_time(model, guide, args, kwargs, program: Program, module=None) -> bool:
    """Vectorized log-weights of 2 particles equal those of each particle replayed alone (nets in
    eval mode, so that dropout does not differ)."""
    was = module.training if module is not None else None
    if module is not None:
        module.eval()
    try:
        mt, gt = vectorized_traces(model, guide, *args, num_particles=2, max_plate_nesting=program.nesting, **kwargs)
        skip = program.global_sites
        vec = terms_from_traces(mt, gt, 2, program.nesting, program.data_plate, skip, complete=False).log_weights
        for i in range(2):
            one = poutine.Trace()
            for name, site in latent_sites(gt):
                one.add_node(name, **dict(site, value=_particle(site["value"], site, i, 2, program.nesting)))
            seq = terms_from_traces(*single_traces(model, guide, *args, fixed=one, **kwargs), 1, program.nesting,
                                    program.data_plate, skip, particle=False, complete=False).log_weights[0]
            if seq.shape != vec[i].shape or not bool(((seq - vec[i]).abs() <= 1e-3 * (1 + seq.abs())).all()):
                return False
        return True
    finally:
        if module is not None:
            module.train(was)


def analyse(model, guide, args=(), kwargs=None, *, data_plate: str | None = None, module=None,
            check_vectorize: bool = True, trusted: bool = False) -> Program:
    """Trace ``guide`` and ``model`` once on ``args``/``kwargs`` (a first batch) and read off a
    `Program`. ``module`` (the ``nn.Module`` holding the nets) is put in eval mode for the
    vectorization check; ``trusted`` skips that check (pvae's own models broadcast particles)."""
    kwargs = kwargs or {}
    model_trace, guide_trace = plain_traces(model, guide, *args, **kwargs)
    first = next((a for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Tensor) and a.dim()), None)
    batch = first.shape[0] if first is not None else None
    if trusted and data_plate is None:
        data_plate = DATA_PLATE
    plate = find_data_plate(model_trace, guide_trace, batch, data_plate)
    nesting, global_sites, scaled = 0, [], []
    for tr in (model_trace, guide_trace):
        for name, site in tr.nodes.items():
            if not is_counted(site):
                continue
            nesting = max([nesting] + [-f.dim for f in site["cond_indep_stack"] if f.vectorized])
            if not site["is_observed"] and not in_plate(site, plate) and name not in global_sites:
                global_sites.append(name)
            scale = site["scale"]
            if isinstance(scale, torch.Tensor) or scale != 1.0:
                if name not in scaled and not _only_subsample_scale(site, plate):
                    scaled.append(name)
    prior = [(n, s) for n, s in latent_sites(model_trace) if n not in guide_trace.nodes]
    prior_sites = [n for n, _ in prior]
    model_enumerated = tuple(n for n, s in prior if s["infer"].get("enumerate"))
    guide_latents = latent_sites(guide_trace)
    auxiliary = tuple(n for n, s in guide_latents if s["infer"].get("is_auxiliary"))
    guide_only = [n for n, _ in guide_latents if n not in model_trace.nodes and n not in auxiliary]
    not_rep = [n for n, s in guide_latents if not s["fn"].has_rsample]
    enumerated = any(s["infer"].get("enumerate") for tr in (model_trace, guide_trace)
                     for s in tr.nodes.values() if s["type"] == "sample")
    program = Program(plate, nesting, vectorize=True, global_sites=tuple(global_sites), scaled_sites=tuple(scaled),
                      prior_sites=tuple(prior_sites), guide_only=tuple(guide_only), auxiliary=auxiliary,
                      model_enumerated=model_enumerated, enumerated=enumerated,
                      not_reparameterized=tuple(not_rep), checked=check_vectorize or trusted)
    unexpected = [n for n in prior_sites if not n.endswith("_unobserved") and n not in model_enumerated]
    if unexpected:
        warnings.warn(f"latent sites {unexpected} of the model have no match in the guide: they are drawn from "
                      "their prior (as Pyro's replay does), so q(z|x) does not cover them", stacklevel=3)
    if check_vectorize and not trusted:
        reason = None
        with poutine.block(), torch.no_grad(), forked_rng():
            try:  # everything raised here is raised by the program's own code
                mt, gt = vectorized_traces(model, guide, *args, num_particles=2, max_plate_nesting=nesting, **kwargs)
            except Exception as e:  # noqa: BLE001 - nets that cannot take a particle dim
                mt = None
                reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            try:
                if mt is not None:
                    terms_from_traces(mt, gt, 2, nesting, plate, tuple(global_sites), complete=False)
                    if not _same_one_at_a_time(model, guide, args, kwargs, program, module):
                        reason = "a vectorized draw gives other log-weights than one particle at a time"
            except ParticleShapeError as e:
                reason = str(e)
        if reason is not None:
            go_sequential(program, reason)
    return program


def go_sequential(program: Program, reason: str) -> None:
    """Draw particles one trace at a time from now on, and say so once."""
    program.vectorize, program.checked = False, True
    note = (f"the program's nets do not take a leading particle dim ({reason[:200]}); pvae draws "
            "particles one trace at a time")
    program.notes.append(note)
    warnings.warn(note, stacklevel=4)


def _only_subsample_scale(site, plate: str) -> bool:
    """Whether a site's scale is just its plates' subsampling factor (full size / subsample size)."""
    scale = site["scale"]
    if isinstance(scale, torch.Tensor):
        return False
    expected = 1.0
    for f in site["cond_indep_stack"]:
        full = getattr(f, "full_size", None)
        if full:
            expected *= full / f.size
    return abs(scale - expected) <= 1e-9 * max(1.0, expected)


# -- parameters the program keeps in Pyro's param store ----------------------------------------

def store_params(pair, args=(), kwargs=None) -> dict:
    """``{name: unconstrained tensor}`` for the parameters that the program registers in Pyro's
    global param store (``pyro.param``, ``pyro.module``) and that ``pair`` does not hold itself;
    pvae trains, checkpoints and restores them as Pyro's SVI does. Creating them (first call of
    ``pyro.param``) happens here, on ``args``."""
    kwargs = kwargs or {}
    held = {id(p) for p in pair.parameters()}
    found = {}
    with forked_rng(), poutine.block(), torch.no_grad():
        guide_trace = poutine.trace(pair.guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(pair.model, trace=guide_trace)).get_trace(*args, **kwargs)
    for tr in (guide_trace, model_trace):
        for name, site in tr.nodes.items():
            if site["type"] != "param":
                continue
            ref = getattr(site["value"], "unconstrained", None)
            t = ref() if ref is not None else site["value"]
            if t is not None and id(t) not in held and t.requires_grad and t.is_leaf:
                found[name] = t
    return found


def untrained_leaves(pair, params, args=(), kwargs=None) -> list:
    """Tensors that require a gradient, that one run of guide and model depends on, and that are
    not among ``params``: described as strings (shape, dtype)."""
    kwargs = kwargs or {}
    have = {id(p) for p in params}
    with forked_rng(), poutine.block():
        mt, gt = single_traces(pair.model, pair.guide, *args, **kwargs)
        total = sum((s["fn"].log_prob(s["value"]).sum() for tr in (mt, gt) for s in tr.nodes.values()
                     if is_counted(s) and (tr is mt or not s["is_observed"])), torch.zeros(()))
    missed, seen, stack = [], set(), [total.grad_fn] if total.grad_fn is not None else []
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        var = getattr(fn, "variable", None)
        if var is not None and id(var) not in have:
            missed.append(f"a {tuple(var.shape)} {str(var.dtype).replace('torch.', '')} tensor")
        stack.extend(f for f, _ in fn.next_functions)
    return missed
