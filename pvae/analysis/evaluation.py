r"""Evaluation of any model/guide pair, per datapoint: `evaluate` reports, from one set of draws,
log p(x) by importance sampling ([`pvae.log_likelihood`][pvae.log_likelihood]), the ELBO, its reconstruction
E_q[log p(x|z)] and KL E_q[log q(z|x) - log p(z)] terms, the effective sample size
(sum w)^2 / sum w^2 and PSIS k-hat (Vehtari et al.; > 0.7 says the estimate is unreliable).
**Active units** (Burda et al.): dimension u is active when Cov_x(E_q[u|x]) > 0.01.
"""

from __future__ import annotations

import math
import warnings

import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.poutine.util import site_is_subsample

from pvae.infer.importance import (
    ess,
    iter_log_weight_terms,
    mc_standard_error,
    standard_error,
)
from pvae.infer.inputs import _eval_inputs
from pvae.infer.pair import as_pair
from pvae.infer.program import program_of
from pvae.infer.sites import in_plate
from pvae.util.tensors import eval_device
from pvae.util.validate import check_flag, check_number, check_positive_int


def psis_khat(log_weights: torch.Tensor) -> torch.Tensor:
    """PSIS Pareto k-hat per datapoint from log-weights of shape ``(k, n)`` (through arviz), or of
    one datapoint from shape ``(k,)``. Too few weights for a tail fit (arviz needs about 25) give inf."""
    from pvae.analysis._arviz import psis_khat as _khat

    lw = torch.as_tensor(log_weights)
    if lw.dim() not in (1, 2) or lw.shape[0] == 0:
        raise ValueError(f"psis_khat takes log-weights of shape (k, n) or (k,), got {tuple(lw.shape)}")
    out = torch.as_tensor(_khat(lw.reshape(lw.shape[0], -1).T.double().cpu().numpy()))
    return out.reshape(lw.shape[1:])


def _posterior_moments(model, data, *, guide=None, modules=None, batch_size: int = 500, num_samples: int = 1000,
                       device=None):
    """``({site: E_q[z|x]}, {site: Monte Carlo noise variance of that mean, averaged over x},
    {names of sites on a simplex or a discrete set: codes, not coordinates})``."""
    pair = as_pair(model, guide, modules)
    batch_size = check_positive_int("batch_size", batch_size)
    num_samples = check_positive_int("num_samples", num_samples, minimum=2)
    device = eval_device(pair, device)
    inputs = _eval_inputs(data, pair)
    program = program_of(pair, inputs.to(device))
    means: dict[str, list] = {}
    noise: dict[str, list] = {}
    coded: set = set()
    was = pair.training
    pair.eval()  # as every evaluation: BatchNorm on its running statistics (left as they are), no dropout
    try:
        with torch.no_grad():
            for start in range(0, inputs.n, batch_size):
                args, kwargs = inputs.take(slice(start, start + batch_size), device=device)
                with poutine.block():
                    tr = poutine.trace(pair.guide).get_trace(*args, **kwargs)
                for name, site in tr.nodes.items():
                    if site["type"] != "sample" or site["is_observed"] or site_is_subsample(site):
                        continue
                    if not in_plate(site, program.data_plate):
                        continue  # a global latent: not a per-datapoint code
                    support = site["fn"].support
                    if support.is_discrete or support is constraints.simplex or getattr(support, "base_constraint", None) \
                            is constraints.simplex:
                        coded.add(name)
                    try:
                        m, var = site["fn"].mean, None
                    except NotImplementedError:  # no closed form (a flow): average draws
                        draws = site["fn"].sample((num_samples,))
                        m, var = draws.mean(0), draws.var(0) / num_samples
                    means.setdefault(name, []).append(m.reshape(m.shape[0], -1).cpu())
                    if var is not None:
                        noise.setdefault(name, []).append(var.reshape(var.shape[0], -1).cpu())
    finally:
        pair.train(was)
    return ({name: torch.cat(ms) for name, ms in means.items()},
            {name: torch.cat(v).mean(0) for name, v in noise.items()}, coded)


@torch.no_grad()
def encodings(model, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """``model.encode`` over ``x`` in batches, on the model's device and in eval mode: a CPU tensor
    of every datapoint's code (the model's training mode is restored after)."""
    was = model.training
    model.eval()
    try:
        return torch.cat([model.encode(xb.to(model.device)).cpu() for xb in x.split(batch_size)])
    finally:
        model.train(was)


def posterior_means(model, data, *, guide=None, modules=None, batch_size: int = 500, num_samples: int = 1000,
                    device=None) -> dict:
    """E_q[z|x] for every latent site of the guide: ``{site: (n, size) tensor}`` on the CPU.

    Uses the guide distribution's ``mean`` where it has one, else the average of ``num_samples``
    draws. Works for any model/guide pair, so figures and active units need no ``encode``.
    """
    return _posterior_moments(model, data, guide=guide, modules=modules, batch_size=batch_size,
                              num_samples=num_samples, device=device)[0]


def active_units(model, data, threshold: float = 0.01, *, guide=None, modules=None, batch_size: int = 500,
                 num_samples: int = 1000, device=None) -> dict:
    """Count dimensions u with Cov_x(E_q[u|x]) > ``threshold`` (Burda et al. 2016).

    Returns ``{"active": int, "variances": {site: tensor}}``. Where E_q[u|x] is estimated from
    draws (guides without a closed-form mean, such as flows), the estimate's own Monte Carlo
    variance, averaged over x, is subtracted, so that noise does not count as activity. Active
    units are defined for continuous latents: discrete and one-hot (simplex) sites are left out,
    and a model with no continuous latent gets ``"active": None``.
    """
    check_number("threshold", threshold, low=0)
    means, noise, coded = _posterior_moments(model, data, guide=guide, modules=modules, batch_size=batch_size,
                                             num_samples=num_samples, device=device)
    variances = {name: m.var(0, unbiased=False) - noise.get(name, 0.0) for name, m in means.items()
                 if name not in coded}
    return {"active": int(sum(int((v > threshold).sum()) for v in variances.values())) if variances else None,
            "variances": variances}


def analysed(pair, data, labels=None, data_plate=None, batch_size: int = 100, device=None):
    """What tracing the pair on its first batch of ``data`` finds (a `Program`; cached on the pair),
    with the nets in eval mode, as evaluation runs them."""
    from pvae.infer.inputs import _eval_inputs
    from pvae.infer.program import program_of
    from pvae.util.tensors import eval_device

    inputs = _eval_inputs(data, pair, labels)
    was = pair.training
    pair.eval()
    try:
        return program_of(pair, inputs.to(eval_device(pair, device)),
                          data_plate, batch_size)
    finally:
        pair.train(was)


def point_mass_sites(pair, program) -> list:
    """The local latents on which the pair's guide puts a point mass (none for most guides)."""
    sites = list(program.point_mass)
    return sites or (["its latents"] if getattr(pair, "point_mass", False) else [])


def evaluate(model, data, k: int = 5000, *, guide=None, modules=None, batch_size: int = 100, device=None,
             progress: bool = True, khat: bool = True, units: bool = True, labels=None,
             data_plate: str | None = None, compile: bool | None = None) -> dict:
    """Everything pvae reports about a trained pair on ``data``, from one set of k draws each.

    Returns per-datapoint tensors (``log_px``, ``log_px_mc_se``: the Monte Carlo standard error of
    each estimate, ``elbo``, ``recon``, ``kl``, ``ess``, ``khat``, ``unreliable``: k-hat > 0.7)
    and a ``summary`` dict of their means, ``log_px_se`` (the standard error of the mean over
    datapoints: the error bar of the reported log p(x)), ``log_px_mc_se`` (the part of it from
    the importance sampler), median/max k-hat, the share of k-hat > 0.7 and the number of active
    units; ``summary["notes"]`` says how the numbers were computed where that
    differs from the plain protocol (global latents held at their guide mean, training scales
    left out, sequential particles). ``compile`` as in [`log_likelihood`][pvae.infer.importance.log_likelihood];
    every reduction but PSIS k-hat runs on the evaluation device.
    """
    k = check_positive_int("the number of importance samples k", k)
    check_flag("khat", khat)
    check_flag("units", units)
    pair = as_pair(model, guide, modules)
    point = point_mass_sites(pair, analysed(pair, data, labels, data_plate, batch_size, device))
    if point:  # no density to weight draws by: one draw gives log p(x|z) at the point, and no log p(x) is claimed
        k, khat = 1, False
    cols = {n: [] for n in ("log_px", "log_px_mc_se", "elbo", "recon", "kl", "ess", "khat")}
    for _, (lpx, lpz, lqz) in iter_log_weight_terms(pair, data, k, batch_size=batch_size, device=device,
                                                    progress=progress, labels=labels, data_plate=data_plate,
                                                    compile=compile, on_device=True, point_mass_ok=point):
        lw = lpx + lpz - lqz
        cols["log_px"].append((torch.logsumexp(lw, 0) - math.log(k)).cpu())
        cols["log_px_mc_se"].append(mc_standard_error(lw).cpu())
        cols["elbo"].append(lw.mean(0).cpu())
        cols["recon"].append(lpx.mean(0).cpu())
        cols["kl"].append((lqz - lpz).mean(0).cpu())
        cols["ess"].append(ess(lw).cpu())
        if khat and k >= 5:
            cols["khat"].append(psis_khat(lw.cpu()))
    out = {n: torch.cat(v) for n, v in cols.items() if v}
    s = {"n": int(out["log_px"].shape[0]), "k": k}
    for n in ("log_px", "elbo", "recon", "kl", "ess"):
        s[n] = float(out[n].mean())
    s["log_px_se"] = standard_error(out["log_px"])
    s["log_px_mc_se"] = float(out["log_px_mc_se"].double().pow(2).sum().sqrt() / s["n"])
    if "khat" in out:
        kh = out["khat"]
        out["unreliable"] = kh > 0.7
        s.update(khat_median=float(kh.median()), khat_max=float(kh.max()), khat_gt_0_7=float((kh > 0.7).double().mean()))
    notes = pair._pvae_program.eval_notes() if getattr(pair, "_pvae_program", None) is not None else []
    if getattr(pair, "_pvae_flat_input", False):
        notes = notes + ["the datapoints reach the program flattened to one vector each, as its nets take them "
                         "(give the module an x_shape attribute to choose the shape)"]
    if s.get("khat_gt_0_7", 0) > 0.5:  # most estimates untrustworthy: said where the number is shown
        line = (f"PSIS k-hat exceeds 0.7 for {s['khat_gt_0_7']:.0%} of the datapoints, so log p(x) from k = {k} "
                "importance samples is unreliable there (noisy, and biased low): raise k, estimate by AIS "
                "(method='ais', pvae eval --method ais), or train with an importance-weighted objective (iwae)")
        notes = notes + [line]
        warnings.warn(line, stacklevel=2)
    if units:
        s["active_units"] = active_units(pair, data, device=device)["active"]
        if s["active_units"] is None:
            del s["active_units"]
            notes = notes + ["active units are not reported: they are defined for continuous latents, and this "
                             "model's latents are discrete or one-hot"]
    bad = int((~torch.isfinite(out["log_px"])).sum())
    if bad:
        notes = notes + [f"log p(x) is not finite for {bad} of {s['n']} datapoints: the model gives them "
                         "probability 0 (-inf) or NaN, and the means over datapoints are not finite"]
    if not point and (s["n"] < 2 or k < 2):
        notes = notes + [f"no standard error {'over datapoints (one datapoint)' if s['n'] < 2 else ''}"
                         f"{' and ' if s['n'] < 2 and k < 2 else ''}{'of the sampler (one draw, k = 1)' if k < 2 else ''}"
                         ": it is reported as null, not 0"]
    if point:
        for key in ("log_px", "log_px_se", "log_px_mc_se", "elbo", "kl", "ess"):
            s.pop(key, None)
            out.pop(key, None)
        notes = notes + [f"the guide puts a point mass (Delta) on {', '.join(point)}: there is no density to "
                         "importance-sample log p(x) with, so none is reported; recon is log p(x|z) at the guide's "
                         "point"]
    if notes:
        s["notes"] = notes
    out["summary"] = s
    return out
