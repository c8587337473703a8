"""Bidirectional Monte Carlo (BDMC, Grosse et al. 2015): on data simulated from the model, a
forward AIS chain gives a stochastic lower bound on log p(x) and a reverse chain started at the
exact posterior draw gives an upper bound; the gap measures how far AIS is from log p(x).
See `pvae.infer.ais` for the chains."""

from __future__ import annotations

import math
import time

import torch
from pyro import poutine

from pvae.infer.ais import CHAINS, LEAPFROG, STEP_SIZE, STEPS, Target, ais, compile_choice, schedule
from pvae.infer.sites import latent_sites
from pvae.nn.nets import flush_denormals
from pvae.util.progress import bar as progress_bar


def _simulate(pair, inputs, n: int, device):
    """(x, exact latents) ~ p(z) p(x|z) for n datapoints: the model run with its one observed site
    sampled (``inputs`` give the arguments' shapes, and any further inputs)."""
    args, kwargs = inputs.take(slice(0, n), device=device)
    with torch.no_grad(), poutine.block():
        observed = [name for name, site in poutine.trace(pair.model).get_trace(*args, **kwargs).nodes.items()
                    if site["type"] == "sample" and site["is_observed"] and not site["infer"].get("_deterministic")]
        if len(observed) != 1:
            raise ValueError(f"bdmc simulates one observed site, and the model observes {observed}")
        tr = poutine.trace(poutine.uncondition(pair.model)).get_trace(*args, **kwargs)
    x, x0 = tr.nodes[observed[0]]["value"], args[0] if inputs.x_key is None else kwargs[inputs.x_key]
    if x.numel() != x0.numel():
        raise ValueError(f"bdmc: the simulated {observed[0]!r} has shape {tuple(x.shape)}, which does not map onto "
                         f"the data's {tuple(x0.shape)}")
    latents = {name: site["value"] for name, site in latent_sites(tr)}
    return x.reshape(x0.shape).to(x0.dtype), latents


def bdmc(model, n: int = 100, steps: int = STEPS, *, chains: int = CHAINS, data=None, start: str = "guide",
         leapfrog: int = LEAPFROG, step_size: float = STEP_SIZE, schedule_kind: str = "sigmoid", guide=None, modules=None,
         seed: int = 0, progress: bool = True, data_plate=None, mass: str = "guide", compile: bool | None = None) -> dict:
    """Bidirectional Monte Carlo on ``n`` datapoints simulated from the model: forward AIS (a
    stochastic lower bound on log p(x)) and reverse AIS from the exact latents (a stochastic
    upper bound). Returns ``{"lower": (n,), "upper": (n,), "gap": (n,), "x": simulated data,
    "summary": {...}}`` (also as attributes ``.lower``, ``.upper``).

    ``data``: datapoints that give the program's input shape and any other members it takes (a
    conditional program's labels): only where the model has no ``x_shape``; their x values are
    replaced by the simulated ones, and fewer than ``n`` rows are repeated to ``n`` in turn.
    ``compile``: as in [`ais_log_likelihood`][pvae.infer.ais.ais_log_likelihood] (both directions run one compiled target)."""
    from pvae.infer.inputs import Inputs, arrange
    from pvae.infer.pair import as_pair
    from pvae.infer.program import check_ais, check_density, check_per_datapoint, program_of
    from pvae.util.tensors import device_of
    from pvae.infer.sites import diverged_said
    from pvae.util.validate import check_flag, check_memory, check_number, check_positive_int

    check_positive_int("n", n)
    check_positive_int("chains", chains)
    check_positive_int("seed", seed, minimum=0)
    check_number("step_size", step_size, low=0, open_low=True)
    check_flag("compile", compile, allow_none=True)
    pair = as_pair(model, guide, modules)
    device = device_of(pair)
    betas = schedule(steps, schedule_kind)
    torch.manual_seed(seed)
    was = pair.training
    pair.eval()
    t0 = time.perf_counter()
    try:
        base = data
        if base is None and getattr(pair, "x_shape", None) is not None:
            base = torch.zeros((n,) + tuple(pair.x_shape))
        if base is None:
            raise ValueError("bdmc needs data=... (a few datapoints) to know the shape of a program's input")
        template = arrange(pair, base, what="bdmc data", evaluation=True)[0]
        if template.n < n:  # a few datapoints give the shape (and any other members): their rows repeat to n
            template = template.subset(torch.arange(n) % template.n)
        program = program_of(pair, template.to(device), data_plate)
        check_density(pair, program, "bdmc (bounds on log p(x))")
        check_per_datapoint(pair, program, "bdmc (bounds on log p(x))")
        check_ais(program)
        if program.global_sites:
            raise ValueError("bdmc simulates from the model, and global latents would have to be simulated too: "
                             f"{list(program.global_sites)} are global")
        row = sum(t[:1].numel() for t in [template.x, *template.args, *template.kwargs.values()])
        check_memory(32.0 * chains * n * row, f"bdmc with {chains} chains on {n} datapoints",
                     f"chains ({chains}) or n ({n})", device)
        with diverged_said():
            x, latents = _simulate(pair, template, n, device)
        sim = Inputs(x, [a[:n].to(device) for a in template.args],
                     {k: v[:n].to(device) for k, v in template.kwargs.items()}, template.x_key)
        args, kwargs = sim.take(slice(0, n))
        bar = progress_bar(total=2 * (len(betas) - 2), desc="BDMC", progress=progress)
        compiles = compile_choice(compile, pair, args, kwargs, chains, start,
                                  2 * (len(betas) - 1) * leapfrog * chains * n)  # both directions
        with poutine.block(), flush_denormals(), diverged_said():
            target = Target(pair, program, args, kwargs, chains)
            lower_w = ais(target, betas, start=start, leapfrog=leapfrog, step_size=step_size, bar=bar, mass=mass,
                          **compiles)
            exact = {name: target.transforms[name].inv(target.at_chains(latents[name], name)).detach()
                     for name, _ in target.sites}
            upper_w = ais(target, betas, start=start, leapfrog=leapfrog, step_size=step_size, reverse_from=exact,
                          mass=mass, bar=bar, **compiles)
        bar.close()
    finally:
        pair.train(was)
    lower = (torch.logsumexp(lower_w, 0) - math.log(chains)).cpu()
    upper = -(torch.logsumexp(upper_w, 0) - math.log(chains)).cpu()
    out = BDMCResult(lower=lower, upper=upper, gap=upper - lower, x=x.cpu())
    out["summary"] = {"n": n, "steps": int(steps), "chains": chains, "leapfrog": leapfrog, "start": start,
                      "lower": float(lower.mean()), "upper": float(upper.mean()), "gap": float((upper - lower).mean()),
                      "seconds": time.perf_counter() - t0}
    return out


class BDMCResult(dict):
    """BDMC's results as a dict, with ``.lower``, ``.upper``, ``.gap`` attributes too."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None
