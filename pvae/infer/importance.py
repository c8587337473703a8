r"""Evaluation of any model/guide pair, per datapoint.

**log p(x) by importance sampling** (Burda et al. 2016, the literature's protocol with
k = 5000): with z_1..z_k ~ q(z|x),

.. math:: \log p(x) \approx \log \frac{1}{k} \sum_{i=1}^k \frac{p(x, z_i)}{q(z_i|x)}
          = \operatorname{logsumexp}_i \log w_i - \log k,

a stochastic lower bound (L_k) in expectation that converges to log p(x) as k grows. The
log-weights are computed per datapoint ([`pvae.infer.program.log_weight_terms`][pvae.infer.program.log_weight_terms]) in chunks of
particles and of datapoints, so memory stays bounded whatever k is.

From the same draws: the ELBO (mean of log w), its reconstruction E_q[log p(x|z)] and KL
E_q[log q(z|x) - log p(z)] terms, the importance-sampling effective sample size
(sum w)^2 / sum w^2, and PSIS k-hat (Vehtari et al.; > 0.7 says the estimate is unreliable).
**Active units** (Burda et al.): dimension u is active when Cov_x(E_q[u|x]) > 0.01.
"""

from __future__ import annotations

import contextlib
import functools
import math
import warnings
import weakref

import torch
from pyro import poutine

from pvae.infer.ais import CHAINS as AIS_CHAINS, LEAPFROG as AIS_LEAPFROG, STEPS as AIS_STEPS
from pvae.infer.inputs import Inputs, _eval_inputs, arrange
from pvae.infer.pair import as_pair
from pvae.infer.program import check_density, check_fold, check_per_datapoint, log_weight_terms, program_of
from pvae.infer.rows import refuse_minibatches
from pvae.infer.sites import Program, invalid_parameters
from pvae.infer.traces import fix_globals
from pvae.infer.weights import ess, mc_standard_error, standard_error  # noqa: F401 (pvae's public names)
from pvae.nn.nets import flush_denormals
from pvae.util.cache import compile_tier
from pvae.util.progress import bar as progress_bar
from pvae.util.tensors import eval_device
from pvae.util.validate import check_flag, check_positive_int

#: particles x datapoints drawn in one pass of the nets on the CPU (bounds evaluation memory). Small
#: enough that a pass's (particles, batch, 784) temporaries stay in the allocator's reused memory (a
#: 63 MB one is mapped afresh and page-faulted on every pass): k = 5000 on 100 images took 4.7 s eager
#: at 20,000 pairs and 4.45 s at 5,000; compiled 2.2 s and 1.7 s (2 Xeon cores, one run each)
PARTICLES_PER_PASS = 5_000
#: ``compile=None`` compiles the evaluation pass from this many particles x datapoints on. On 2 Xeon
#: cores, k = 5000 on 100 images (0.5M pairs) of the IWAE paper's net took 2.4-2.5 s eager (3.5-4.5 s
#: in other runs) and 1.8 s compiled a call, so compiling saves about 1.2 us a pair; the first
#: compiled call took 2.4-2.65 s where this machine had compiled this very graph before (same net,
#: particles per pass and batch shape: inductor's on-disk cache hit, about 0.6 s), 6.4-9.4 s where it
#: had compiled this net's pass with other shapes (about 5.5 s) and about 14 s where it never had.
#: Hence from 0.5M, 3M (600 images at k = 5000) and 10M pairs; later calls on the same model object
#: run its graphs whatever their size.
COMPILE_FROM = {"graph": 500_000, "warm": 3_000_000, "cold": 10_000_000}


def iter_log_weight_terms(model, data, k: int, *, guide=None, modules=None, batch_size: int = 100,
                          device=None, progress: bool = False, desc: str = "log p(x)", labels=None,
                          data_plate: str | None = None, compile: bool | None = None, on_device: bool = False,
                          point_mass_ok: bool = False):
    """Yield ``(start, terms)`` per batch of data, with ``terms`` (k, batch) tensors concatenated
    over chunks of particles: [`LogWeightTerms`][pvae.infer.sites.LogWeightTerms] fields, on the CPU
    (on the evaluation device with ``on_device=True``). Global latents are held at their guide mean
    ([`pvae.infer.traces.fix_globals`][pvae.infer.traces.fix_globals]).

    ``compile``: run each chunk as a traced and compiled graph ([`pvae.infer.compiled_eval.CompiledTerms`][pvae.infer.compiled_eval.CompiledTerms]);
    None compiles from `COMPILE_FROM` particles x datapoints on (fewer where this machine compiled the
    model's pass before) and, below that, runs the graphs already compiled for this model. Programs with global latents or
    sequential particles stay eager. A guide with a point mass on a local latent is refused
    (`pvae.infer.program.check_density`) unless ``point_mass_ok`` (evaluation's log p(x|z))."""
    pair = as_pair(model, guide, modules)
    batch_size = check_positive_int("batch_size", batch_size)
    check_flag("compile", compile, allow_none=True)
    device = eval_device(pair, device)
    inputs = _eval_inputs(data, pair, labels)
    n = inputs.n
    chunk = max(1, min(k, PARTICLES_PER_PASS // max(1, min(batch_size, n))))
    was_training = pair.training
    pair.eval()
    bar = progress_bar(total=n, desc=desc, progress=progress, unit="x")
    program, fixed, compiled, sized = None, None, None, False
    denormals = flush_denormals() if device.type == "cpu" else contextlib.nullcontext()
    try:
        with torch.no_grad(), denormals:
            for start in range(0, n, batch_size):
                args, kwargs = inputs.take(slice(start, start + batch_size), device=device)
                if program is None:
                    program = program_of(pair, inputs.to(device), data_plate, batch_size)
                    if not point_mass_ok:
                        check_density(pair, program)
                    refuse_minibatches(program, batch_size, n, "evaluation")
                    check_per_datapoint(pair, program)
                    with poutine.block():
                        fixed = fix_globals(pair.guide, program, *args, **kwargs)
                    check_fold(pair, program, args, kwargs, fixed)
                    compiled = _compiled_terms(pair, program, fixed, compile, n * k, (args, kwargs, min(chunk, k)))
                parts, c = [], 0
                while c < k:
                    measure = device.type == "cuda" and not sized  # the first pass on a GPU sizes the others
                    if measure:
                        torch.cuda.reset_peak_memory_stats(device)
                        base = torch.cuda.memory_allocated(device)
                    try:
                        with poutine.block():
                            t = None if compiled is None else compiled(args, kwargs, min(chunk, k - c))
                            t = t if t is not None else log_weight_terms(
                                pair.model, pair.guide, *args, num_particles=min(chunk, k - c), program=program,
                                fixed=fixed, fold=True, **kwargs)
                    except torch.OutOfMemoryError:
                        if chunk == 1:
                            raise
                        chunk = max(1, chunk // 2)  # out of device memory: retry with smaller chunks
                        if device.type == "cuda":
                            torch.cuda.empty_cache()
                        continue
                    parts.append(tuple(u if on_device else u.cpu() for u in t[:3]))
                    if measure:
                        pairs = t[0].shape[0] * t[0].shape[1]
                        per_pair = (torch.cuda.max_memory_allocated(device) - base) / pairs
                        chunk, sized = chunk_for_memory(torch.cuda.mem_get_info(device)[0], per_pair,
                                                        t[0].shape[1], k, chunk), True
                    c += t[0].shape[0]
                yield start, tuple(torch.cat(p, 0) for p in zip(*parts))
                bar.update(min(batch_size, n - start))
    except ValueError as e:
        if not str(e).startswith("Expected parameter"):
            raise
        raise FloatingPointError(_invalid_parameters(e)) from None
    finally:
        bar.close()
        pair.train(was_training)


def chunk_for_memory(free_bytes: int, bytes_per_pair: float, batch: int, k: int, chunk: int,
                     share: float = 0.25) -> int:
    """Particles per pass on a GPU: as many as fit in ``share`` of the free memory, at the
    ``bytes_per_pair`` one pass was measured to need per particle-datapoint pair, for a batch of
    ``batch`` datapoints; between the CPU-sized ``chunk`` and ``k``. (On the CPU chunks stay at
    `PARTICLES_PER_PASS` pairs: bigger ones only cost cache misses.)"""
    fits = int(share * free_bytes / max(bytes_per_pair, 1.0) / max(batch, 1))
    return max(chunk, min(k, fits))


_COMPILED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # pair -> its CompiledTerms


def _compiled_terms(pair, program, fixed, compile, work: int, first_pass: tuple):
    """The pair's compiled evaluation pass (kept per pair in `_COMPILED`, so later calls reuse its
    graphs), or None. ``first_pass``: ``(args, kwargs, particles)`` of the first pass."""
    from pvae.infer.compiled_eval import CompiledTerms, eval_signature

    if compile is False:
        return None
    why = ("the program has global latents" if fixed is not None else
           "its particles are drawn one trace at a time" if not program.vectorize else None)
    if why:
        if compile:
            warnings.warn(f"compiled evaluation: the pass stays eager: {why}", stacklevel=4)
        return None
    cached = _COMPILED.get(pair)
    cached = cached if cached is not None and cached.program is program else None
    if compile is None and work < COMPILE_FROM[compile_tier(eval_signature(pair, *first_pass), eval_signature(pair))]:
        # too little work to pay for a compile: only graphs already compiled for this pair run
        return functools.partial(cached, compile_new=False) if cached is not None and any(cached.graphs.values()) else None
    if cached is None:
        cached = _COMPILED[pair] = CompiledTerms(pair, program, say=lambda line: warnings.warn(line, stacklevel=5))
    return cached


def log_likelihood(model, data, k: int = 5000, *, guide=None, modules=None, batch_size: int = 100,
                   device=None, progress: bool = True, labels=None, data_plate: str | None = None,
                   method: str = "is", steps: int = AIS_STEPS, chains: int = AIS_CHAINS, start: str = "guide",
                   leapfrog: int = AIS_LEAPFROG, compile: bool | None = None, with_se: bool = False):
    """Importance-sampled log p(x), one value per datapoint (a CPU tensor of shape ``(n,)``).

    ``model`` is a pvae model or any module with ``.model``/``.guide`` (or a model function with
    ``guide=`` and ``modules=``); ``data`` anything [`pvae.data.datasets.as_tensors`][pvae.data.datasets.as_tensors] takes. A
    conditional pair gets the data's labels (or ``labels=``) and estimates log p(x|y); a program
    taking several inputs per datapoint (``(x, a, b)`` data) gets the log-probability of all its
    observed sites. ``data_plate`` names the plate over datapoints (None: found by tracing).

    ``method="ais"``: annealed importance sampling instead ([`pvae.infer.ais.ais_log_likelihood`][pvae.infer.ais.ais_log_likelihood]):
    ``chains`` chains per datapoint, ``steps`` annealing steps of ``leapfrog``-step HMC, starting
    from the guide (``start="guide"``) or the prior (``"prior"``); ``k`` is then unused.
    ``with_se=True`` returns ``(log_px, mc_se)``, each estimate's Monte Carlo standard error over
    its draws (IS: the k importance weights; AIS: the chains), by the delta method
    ([`mc_standard_error`][pvae.infer.weights.mc_standard_error]).

    The log-weights stay on the evaluation device and are reduced there; only the per-datapoint
    estimates come back. ``compile``: trace and compile the evaluation pass once per chunk shape
    (None: from `COMPILE_FROM` particles x datapoints on, fewer where this machine compiled the model's
    pass before; the graphs are kept, and later calls of any size run them); with ``method="ais"``,
    compile AIS's target (`pvae.infer.ais_graph.COMPILE_FROM` for None).
    """
    check_flag("with_se", with_se)
    if method == "ais":
        from pvae.infer.ais import ais_log_likelihood

        return ais_log_likelihood(model, data, steps=steps, chains=chains, start=start, leapfrog=leapfrog,
                                  guide=guide, modules=modules, batch_size=batch_size, progress=progress,
                                  labels=labels, data_plate=data_plate, with_se=with_se, device=device,
                                  compile=compile)
    if method != "is":
        raise ValueError(f"method must be 'is' (importance sampling) or 'ais' (annealed), got {method!r}")
    k = check_positive_int("the number of importance samples k", k)
    out, se = [], []
    pair = as_pair(model, guide, modules)
    for _, (lpx, lpz, lqz) in iter_log_weight_terms(pair, data, int(k), batch_size=batch_size, device=device,
                                                    progress=progress, labels=labels, data_plate=data_plate,
                                                    compile=compile, on_device=True):
        out.append((torch.logsumexp(lpx + lpz - lqz, 0) - math.log(k)).cpu())
        if with_se:
            se.append(mc_standard_error(lpx + lpz - lqz).cpu())
    _say_notes(pair)
    ll = torch.cat(out)
    nan = torch.isnan(ll)
    if bool(nan.any()):
        raise FloatingPointError(f"log p(x) is NaN for {int(nan.sum())} of {ll.numel()} datapoints (the first: "
                                 f"{int(nan.nonzero()[0, 0])}): the model or guide gives NaN log-densities there")
    return (ll, torch.cat(se)) if with_se else ll


_invalid_parameters = invalid_parameters


def _say_notes(pair) -> None:
    """Where a bare tensor result cannot carry them, say once how it was computed."""

    program = getattr(pair, "_pvae_program", None)
    for note in (program.eval_notes() if program is not None else []):
        if "global latents" in note and note not in _SAID:
            _SAID.add(note)
            warnings.warn(f"log_likelihood: {note}", stacklevel=3)


_SAID: set = set()


@torch.no_grad()
def mean_elbo(pair, data, program: Program | None = None, batch_size: int = 1000) -> float:
    """The ELBO (one draw, no beta, warm-up or other training scale) averaged over the datapoints
    of ``data`` (an [`Inputs`][pvae.infer.inputs.Inputs], or anything [`pvae.fit`][pvae.fit] takes); global
    latents are held at their guide mean."""
    inputs = data if isinstance(data, Inputs) else arrange(pair, data, what="evaluation data", evaluation=True)[0]
    if program is None:
        from pvae.infer.program import program_of

        program = program_of(pair, inputs, batch_size=batch_size)
    total, fixed = 0.0, None
    for s in range(0, inputs.n, batch_size):
        args, kwargs = inputs.take(slice(s, s + batch_size))
        with poutine.block():
            if fixed is None:
                fixed = fix_globals(pair.guide, program, *args, **kwargs)
            t = log_weight_terms(pair.model, pair.guide, *args, num_particles=1, program=program, fixed=fixed, **kwargs)
        total += float(t.log_weights.sum())
    return total / inputs.n
