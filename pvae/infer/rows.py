"""Per-datapoint parameters: a guide (or model) that keeps one parameter row per datapoint instead
of computing them from x (an encoder) ties each row to a position in the batch it is given.

Pyro users pass the whole data set and subsample inside the plate (``pyro.plate("data", N,
subsample=idx)``), so row i always meets datapoint i. pvae feeds the program minibatches, so
such rows would meet a different datapoint every step, silently. `per_datapoint_sites` finds
them: the local latents of an autoguide (``AutoNormal(model)`` and kin: their parameters have one
row per plate position), and ``pyro.param``s whose shape follows the size of the batch (traced
once more, on a batch one row shorter, in a scope of its own). `pvae.fit` then keeps the rows in
a fixed order where one batch holds them all, and refuses minibatches in one line.
"""

from __future__ import annotations

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from pvae.infer.sites import forked_rng


def _autoguides(guide, module):
    from pyro.infer.autoguide import AutoGuide

    seen, found = set(), []
    owners = [guide, getattr(guide, "__self__", None), getattr(module, "_guide", None)]
    owners += list(module.modules()) if isinstance(module, torch.nn.Module) else []
    for obj in owners:
        if isinstance(obj, AutoGuide) and id(obj) not in seen:
            seen.add(id(obj))
            found.append(obj)
    return found


def _autoguide_locals(guide, module, plate: str) -> list:
    """Latent sites inside ``plate`` that an autoguide covers with parameters of its own."""
    out = []
    for auto in _autoguides(guide, module):
        trace = getattr(auto, "prototype_trace", None)
        if trace is None:
            continue
        for name, site in trace.nodes.items():
            if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site) \
                    and any(f.name == plate for f in site["cond_indep_stack"]):
                out.append(name)
    return out


def _param_shapes(fn, args, kwargs) -> dict:
    with pyro.get_param_store().scope(), poutine.block(), torch.no_grad(), forked_rng():
        trace = poutine.trace(fn).get_trace(*args, **kwargs)
    return {name: tuple(site["value"].shape) for name, site in trace.nodes.items()
            if site["type"] == "param" and "$$$" not in name}


def _batch_sized_params(model, guide, args, kwargs, batch: int) -> list:
    """``pyro.param``s of model or guide whose shape follows the number of datapoints given."""
    if batch < 2:
        return []
    shorter = [a[:batch - 1] if isinstance(a, torch.Tensor) and a.dim() and a.shape[0] == batch else a for a in args]
    shorter_kw = {k: v[:batch - 1] if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == batch else v
                  for k, v in kwargs.items()}
    out = []
    for fn in (guide, model):
        try:
            full, short = _param_shapes(fn, args, kwargs), _param_shapes(fn, shorter, shorter_kw)
        except Exception:  # noqa: BLE001 - a program that cannot take a shorter batch keeps no such rows here
            continue
        out += [n for n in full if n in short and full[n] != short[n] and n not in out]
    return out


def per_datapoint_sites(model, guide, args, kwargs, plate: str, traces, module=None, batch: int | None = None) -> list:
    """What of the program keeps one parameter row per datapoint (names of sites or params).
    ``traces``: a model and a guide trace already taken (the shorter batch is traced only where
    they hold ``pyro.param``s of their own); modules are in eval mode meanwhile (no BatchNorm
    statistics move)."""
    found = _autoguide_locals(guide, module, plate)
    own = any(s["type"] == "param" and "$$$" not in n for tr in traces for n, s in tr.nodes.items())
    if batch is not None and own:
        was = module.training if isinstance(module, torch.nn.Module) else None
        if was is not None:
            module.eval()
        try:
            found += [n for n in _batch_sized_params(model, guide, args, kwargs, batch) if n not in found]
        finally:
            if was is not None:
                module.train(was)
    return found


def refuse_minibatches(program, batch_size: int, n: int, what: str = "training") -> None:
    """One line, where per-datapoint rows would meet other datapoints in batches of ``batch_size``."""
    if program.per_datapoint and batch_size < n:
        raise ValueError(f"the program keeps one parameter row per datapoint ({', '.join(program.per_datapoint)}: "
                         f"an autoguide over local latents, or pyro.params sized by the batch), and {what} in "
                         f"batches of {batch_size} of {n} datapoints would give each row other datapoints: use "
                         f"batch_size >= {n} (rows then keep their order), or an amortized guide (an encoder of x)")
