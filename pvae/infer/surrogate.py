r"""Gradient estimators of the IWAE bound given by per-particle weights on a surrogate loss:
doubly reparameterized gradients (DReG, Tucker et al. 2019), sticking the landing (STL, Roeder et
al. 2017) and the partially importance-weighted bound (PIWAE, Rainforth et al. 2018).

Each has the bound L_k of `pvae.infer.iwae` as its value and a lower-variance gradient for
the guide: the score-function part of the guide's gradient is dropped (its expectation is zero),
and the remaining path derivative is reweighted (see `_SurrogateELBO`).
"""

from __future__ import annotations

import math

import pyro
import torch
from pyro import poutine
from torch import nn

from pvae.infer.iwae import ImportanceWeightedELBO, _groups
from pvae.infer.sites import PARTICLES, Program, latent_sites
from pvae.infer.traces import _per_datapoint, terms_from_traces


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

    def check(self, program: Program) -> None:
        """As the IWAE bound's, and the particles must be vectorized (one surrogate pass)."""
        super().check(program)
        if not program.vectorize:
            raise ValueError(f"{type(self).__name__} needs nets that take a leading particle dim, and this program's "
                             "do not (see the warning above): use 'iwae' or 'elbo'")

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
