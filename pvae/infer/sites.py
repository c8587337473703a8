"""What pvae reads off one trace of a Pyro program: the sites that carry a density, the plates
they sit in, the plate over datapoints, and the `Program` record that the analysis
([`pvae.infer.program.analyse`][pvae.infer.program.analyse]) fills in."""

from __future__ import annotations

import contextlib

from dataclasses import dataclass, field
from typing import NamedTuple

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
    point_mass: tuple = ()  # local latents the guide puts a point mass (Delta) on: no density to weight with
    per_datapoint: tuple = ()  # sites or params with one parameter row per datapoint (pvae.infer.rows)
    discrete: tuple = ()  # latents of the guide with a discrete support (no HMC for AIS)
    joint_local: tuple = ()  # local latents an autoguide derives from one joint draw over all sites
    observed_in_model: tuple = ()  # guide latents that the model observes
    notes: list = field(default_factory=list)
    checked: bool = False  # whether vectorization was tried (or the program is pvae's own)
    foldable: bool | None = None  # sequential particles may go into the batch in eval mode (None: not yet tried)

    def eval_notes(self) -> list:
        """What every evaluation result of this program should say about how it was computed."""
        out = []
        shown = [n for n in self.global_sites if n not in self.auxiliary]
        if shown:
            out.append(f"global latents {shown} fixed at their guide mean for per-datapoint "
                       "evaluation (log p(x | global point estimate))")
        if self.scaled_sites:
            out.append(f"training scales on {list(self.scaled_sites)} ignored for evaluation")
        if not self.vectorize and self.foldable:
            out.append("particles folded into the batch for evaluation (the program's nets take no particle dim; "
                       "nets in eval mode, checked equal to one trace per particle)")
        elif not self.vectorize:
            out.append("particles drawn sequentially (the program's nets take no particle dim)")
        if self.per_datapoint:
            out.append(f"per-datapoint parameters ({', '.join(self.per_datapoint)}): datapoint i is scored with "
                       "parameter row i, so the data must be the training data in their order")
        return out

def invalid_parameters(e: ValueError) -> str:
    """Pyro's distribution check (a multi-line dump) -> one line naming the parameter."""
    first = str(e).splitlines()[0]
    what = first.split(" of distribution")[0].replace("Expected parameter ", "")
    return (f"the model or guide made an invalid distribution parameter ({what}): NaN or inf weights or outputs "
            "(a diverged model?)")


@contextlib.contextmanager
def diverged_said():
    """Pyro's multi-line dump for a NaN distribution parameter, as one ``FloatingPointError`` line."""
    try:
        yield
    except ValueError as e:
        if not str(e).startswith("Expected parameter"):
            raise
        raise FloatingPointError(invalid_parameters(e)) from None


def is_point_mass(fn) -> bool:
    """Whether a site's distribution is a ``Delta`` (through ``Independent``, masks and scales)."""
    import pyro.distributions as dist

    while not isinstance(fn, dist.Delta) and hasattr(fn, "base_dist"):
        fn = fn.base_dist
    return isinstance(fn, dist.Delta)


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


@contextlib.contextmanager
def kept_state(module):
    """pvae's looks at a program leave no trace: the module's buffers (BatchNorm running
    statistics and batch counts, ...) and the random-number state are as they were on exit, so
    training then moves them exactly as plain Pyro SVI would."""
    saved = [(b, b.detach().clone()) for b in module.buffers()] if isinstance(module, torch.nn.Module) else []
    with forked_rng():
        try:
            yield
        finally:
            with torch.no_grad():
                for b, v in saved:
                    if b.shape == v.shape:
                        b.copy_(v)


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


def check_support(model_trace, what: str = "data") -> None:
    """Every observed value inside its distribution's support (masked-out entries aside): data of
    grey pixels under a Bernoulli likelihood are refused here, before any work, with the fix."""
    for name, site in model_trace.nodes.items():
        if not (is_counted(site) and site["is_observed"]):
            continue
        fn, value = site["fn"], site["value"]
        if _opted_out(fn):
            continue  # the program said validate_args=False (Pyro's examples/vae on grey pixels): its choice
        try:
            ok = fn.support.check(value)
        except (NotImplementedError, RuntimeError, TypeError, ValueError):
            continue  # a support that cannot check this value
        for mask in (site.get("mask"), getattr(fn, "_mask", None)):
            if isinstance(mask, torch.Tensor):
                ok = ok | ~mask.bool()
        if not bool(torch.as_tensor(ok).all()):
            base = fn
            while hasattr(base, "base_dist"):
                base = base.base_dist
            try:  # an offending value, elementwise by the innermost distribution's support
                bad = value[~base.support.check(value).expand(value.shape)]
                example = f"values such as {float(bad.flatten()[0]):g}" if bad.numel() else "other values"
            except (NotImplementedError, RuntimeError, TypeError, ValueError, IndexError):
                example = "other values"
            fix = ("binarize them (binarize='dynamic' or 'static' in pvae.load_dataset, --binarize dynamic on the "
                   "command line)" if "oolean" in repr(fn.support) or "0, 1" in repr(fn.support)
                   else "choose a likelihood whose support holds them")
            raise ValueError(f"the {what} do not fit the model's observed site {name!r}: {type(base).__name__} "
                             f"takes values in {fn.support} and the data hold {example}; {fix}")


def _opted_out(fn) -> bool:
    """A distribution (or one it wraps) made with ``validate_args=False`` while validation is on."""
    while fn is not None:
        if getattr(fn, "_validate_args", None) is False:
            return True
        fn = getattr(fn, "base_dist", None)
    return False


def checked_support(model, guide, *args, **kwargs) -> None:
    """`check_support` on a trace made with Pyro's validation on, so that a distribution the program
    built with ``validate_args=False`` is told apart and left to its author; a program that fails to
    trace with validation on is left to the later steps, which say what fails."""
    import pyro

    try:
        with pyro.validation_enabled(True):
            model_trace, _ = plain_traces(model, guide, *args, **kwargs)
    except Exception:  # noqa: BLE001 - validation's own complaints are not this check's to raise
        return
    check_support(model_trace)
