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

import torch
from pyro import poutine

from pvae.infer.inputs import Inputs, own_model
from pvae.infer.rows import per_datapoint_sites
from pvae.infer.sites import (
    DATA_PLATE,
    LogWeightTerms,
    ParticleShapeError,
    Program,
    checked_support,
    diverged_said,
    find_data_plate,
    forked_rng,
    in_plate,
    is_counted,
    is_point_mass,
    latent_sites,
    plain_traces,
)
from pvae.infer.traces import folded_traces, single_traces, terms_from_traces, vectorized_traces


def program_of(pair, inputs: Inputs, data_plate: str | None = None, batch_size: int = 100) -> Program:
    """What tracing the pair once finds (cached on the pair by [`pvae.fit`][pvae.fit])."""
    cached = getattr(pair, "_pvae_program", None)
    if cached is not None and data_plate in (None, cached.data_plate):
        return cached
    args, kwargs = inputs.head(batch_size)
    with diverged_said():  # a diverged model: one line, not Pyro's dump
        program = analyse(pair.model, pair.guide, args, kwargs, data_plate=data_plate, module=pair,
                          trusted=own_model(pair))
    pair._pvae_program = program
    return program


def log_weight_terms(model, guide, *args, num_particles: int = 1, max_plate_nesting: int | None = None,
                     data_plate: str | None = None, program: Program | None = None, fixed=None,
                     complete: bool = True, fold: bool = False, **kwargs) -> LogWeightTerms:
    """Draw ``num_particles`` z ~ q(z|x) and return per-datapoint log p(x|z), log p(z) and
    log q(z|x), each of shape ``(num_particles, batch)``.

    ``model`` and ``guide`` take the same ``*args, **kwargs``. Particles are drawn in one
    vectorized pass, or one trace each where the program's nets cannot take a particle dim
    (``program.vectorize``; `analyse` finds out). The draws are reparameterized where the
    guide's distributions allow it, so the result is differentiable. ``fixed``: a trace of
    global latents held at point values (see `fix_globals`). ``complete``: every datapoint
    of the batch must be scored (evaluation); False allows a program that subsamples its data
    plate itself (training). ``fold``: particles of a program whose nets take no particle dim go
    into the batch (every datapoint repeated k times, one trace) where `check_fold` found that
    equal to one trace per particle; the caller puts the nets in eval mode (evaluation).
    """
    if program is None:
        program = analyse(model, guide, args, kwargs, data_plate=data_plate, check_vectorize=False)
        if max_plate_nesting is not None:
            program.nesting = max_plate_nesting
    skip = tuple(fixed.nodes) if fixed is not None else ()
    k, nesting = num_particles, program.nesting
    if fold and not program.vectorize and program.foldable:
        batch = next(a for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Tensor)).shape[0]
        t = terms_from_traces(*folded_traces(model, guide, *args, num_particles=k, fixed=fixed, **kwargs), 1,
                              nesting, program.data_plate, skip, particle=False, complete=complete)
        return LogWeightTerms(*(u.reshape(k, batch) for u in t[:3]), t.latent_scale, t.obs_scale)
    if program.vectorize:
        mt, gt = vectorized_traces(model, guide, *args, num_particles=k, max_plate_nesting=nesting, fixed=fixed,
                                   **kwargs)
        return terms_from_traces(mt, gt, k, nesting, program.data_plate, skip, complete=complete)
    terms = [terms_from_traces(*single_traces(model, guide, *args, fixed=fixed, **kwargs), 1, nesting,
                               program.data_plate, skip, particle=False, complete=complete) for _ in range(k)]
    return LogWeightTerms(*(torch.cat(t, 0) for t in zip(*(t[:3] for t in terms))),
                          terms[0].latent_scale, terms[0].obs_scale)


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


def check_fold(pair, program: Program, args, kwargs, fixed=None) -> bool:
    """Whether a sequential program's particles may be folded into the batch for evaluation
    (``program.foldable``, found once): two folded particles (nets in eval mode) must give the
    log-weights of each particle replayed alone. A program with one parameter row per datapoint,
    a fixed batch size or anything else that breaks stays one trace per particle."""
    if program.vectorize or program.foldable is not None:
        return bool(program.foldable)
    program.foldable = False
    if program.per_datapoint:
        return False
    batch = next((a for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Tensor) and a.dim()), None)
    if batch is None:
        return False
    B, skip = batch.shape[0], tuple(fixed.nodes) if fixed is not None else ()
    was = pair.training
    pair.eval()
    try:
        with forked_rng(), poutine.block(), torch.no_grad():
            mt, gt = folded_traces(pair.model, pair.guide, *args, num_particles=2, fixed=fixed, **kwargs)
            folded = terms_from_traces(mt, gt, 1, program.nesting, program.data_plate, skip,
                                       particle=False).log_weights.reshape(2, B)
            for i in range(2):
                one = poutine.Trace()
                for name, site in latent_sites(gt):
                    one.add_node(name, **dict(site, value=_rows(site, program, i, B)))
                seq = terms_from_traces(*single_traces(pair.model, pair.guide, *args, fixed=one, **kwargs), 1,
                                        program.nesting, program.data_plate, skip, particle=False).log_weights[0]
                if seq.shape != folded[i].shape or not bool(((seq - folded[i]).abs() <= 1e-3 * (1 + seq.abs())).all()):
                    return False
    except Exception:  # the program cannot take a folded batch (a fixed batch size, ...): one trace per particle
        return False
    finally:
        pair.train(was)
    program.foldable = True
    return True


def _rows(site, program: Program, i: int, B: int) -> torch.Tensor:
    """Particle i's rows of a folded site value (sites outside the data plate as they are)."""
    value = site["value"]
    frame = next((f for f in site["cond_indep_stack"] if f.name == program.data_plate), None)
    if frame is None:
        return value
    dim = value.dim() - len(site["fn"].event_shape) + frame.dim
    return value.narrow(dim, i * B, B) if 0 <= dim < value.dim() and value.shape[dim] == 2 * B else value


def analyse(model, guide, args=(), kwargs=None, *, data_plate: str | None = None, module=None,
            check_vectorize: bool = True, trusted: bool = False) -> Program:
    """Trace ``guide`` and ``model`` once on ``args``/``kwargs`` (a first batch) and read off a
    `Program`. ``module`` (the ``nn.Module`` holding the nets) is put in eval mode for the
    vectorization check; ``trusted`` skips that check (pvae's own models broadcast particles)."""
    kwargs = kwargs or {}
    model_trace, guide_trace = plain_traces(model, guide, *args, **kwargs)
    if not trusted:  # pvae's own models check their data against their likelihood when they get them
        checked_support(model, guide, *args, **kwargs)
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
    discrete = tuple(n for n, s in guide_latents if s["fn"].support.is_discrete)
    observed = tuple(n for n, _ in guide_latents if n in model_trace.nodes and model_trace.nodes[n]["is_observed"])
    joint = auxiliary and any(n in global_sites for n in auxiliary)  # one draw outside the data plate ...
    joint_local = tuple(n for n, s in guide_latents if joint and n not in auxiliary and in_plate(s, plate)
                        and is_point_mass(s["fn"]))  # ... that per-datapoint sites are cut from
    point_mass = () if auxiliary else tuple(  # (an autoguide's Delta sites carry its auxiliary draw's density)
        n for n, s in guide_latents if is_point_mass(s["fn"]) and n not in global_sites)
    enumerated = any(s["infer"].get("enumerate") for tr in (model_trace, guide_trace)
                     for s in tr.nodes.values() if s["type"] == "sample")
    program = Program(plate, nesting, vectorize=True, global_sites=tuple(global_sites), scaled_sites=tuple(scaled),
                      prior_sites=tuple(prior_sites), guide_only=tuple(guide_only), auxiliary=auxiliary,
                      model_enumerated=model_enumerated, enumerated=enumerated,
                      not_reparameterized=tuple(not_rep), point_mass=point_mass, discrete=discrete,
                      joint_local=joint_local, observed_in_model=observed,
                      checked=check_vectorize or trusted)
    if not trusted:
        program.per_datapoint = tuple(per_datapoint_sites(model, guide, args, kwargs, plate, (model_trace, guide_trace),
                                                          module=module, batch=batch))
    if observed:
        warnings.warn(f"the guide samples {list(observed)}, which the model observes: the model uses the observed "
                      "values, so the guide's draws only add -log q to every weight (its entropy is trained up); "
                      "sample them in the guide only where they are not given", stacklevel=3)
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


def check_density(pair, program: Program, what: str = "log p(x)") -> None:
    """Refuse, in one line, an estimate of log p(x) for a guide that puts a point mass on a local
    latent (an autoencoder's, a VQ-VAE's, a user's ``dist.Delta``): there is no q(z|x) to weight
    draws by, and such a model's p(x) is not what its training fits."""
    sites = list(program.point_mass)
    if not sites and getattr(pair, "point_mass", False):
        sites = ["its latents"]
    if sites:
        raise ValueError(f"{what} needs a guide with a density, and {type(pair).__name__}'s guide puts a point mass "
                         f"(Delta) on {', '.join(map(str, sites))} for each datapoint: no log p(x) is estimated for it; "
                         "pvae.evaluate reports log p(x|z) at the point ('recon') instead")


def check_per_datapoint(pair, program: Program, what: str = "log p(x)") -> None:
    """Refuse, in one line, a per-datapoint estimate the program's guide cannot give: local latents
    cut from one joint draw over every datapoint (AutoDiagonalNormal, AutoMultivariateNormal,
    AutoLowRankMultivariateNormal), or guide draws of values the model observes."""
    if program.joint_local:
        raise ValueError(f"{what} is estimated per datapoint, and the guide draws {list(program.joint_local)} for "
                         f"all datapoints at once from one joint latent {[n for n in program.auxiliary]}, which pvae "
                         "would hold at its mean (a point value, not an estimate): use an autoguide with one latent "
                         "per site (AutoNormal) or an amortized guide")
    if program.observed_in_model:
        raise ValueError(f"{what}: the guide samples {list(program.observed_in_model)}, which the model observes, so "
                         "its draws would enter every importance weight: sample them in the guide only where they "
                         "are not given (as Pyro's semi-supervised examples do)")


def check_ais(program: Program) -> None:
    """Refuse, in one line and before any work, AIS on a program it cannot move: HMC needs every
    latent of the model in the guide and every latent continuous."""
    if program.prior_sites:
        raise ValueError(f"AIS needs every latent of the model in the guide; {list(program.prior_sites)} are not")
    if program.discrete or program.model_enumerated:
        name = (list(program.discrete) + list(program.model_enumerated))[0]
        raise ValueError(f"AIS moves continuous latents with HMC, and site {name!r} of the program is discrete: use "
                         "method='is' (importance sampling)")


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
