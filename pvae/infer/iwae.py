r"""The importance-weighted bound (IWAE, Burda et al. 2016), per datapoint, and its multi-sample
relatives.

For one datapoint x and k draws z_1..z_k ~ q(z|x), with log-weights
log w_i = log p(x, z_i) - log q(z_i|x):

.. math:: \mathcal L_k = E\Big[\log \frac{1}{k} \sum_{i=1}^k w_i\Big] \le \log p(x),
          \qquad \mathcal L_\alpha = \frac{1}{1-\alpha} E\Big[\log \frac1k \sum_i w_i^{1-\alpha}\Big]

increasing in k (Rényi-alpha, Li & Turner 2016: alpha = 0 is IWAE, alpha -> 1 the ELBO).
MIWAE (Rainforth et al. 2018) averages M bounds of K particles each; CIWAE is the convex
combination beta L_ELBO + (1 - beta) L_IWAE.

Pyro's ``vectorized_importance_weights`` sums the log-weights over the data plate, one weight per
*batch*; these bounds keep one per datapoint through
[`pvae.infer.program.log_weight_terms`][pvae.infer.program.log_weight_terms].
"""

from __future__ import annotations

import math

import torch
from pyro.infer import ELBO
from pyro.infer.enum import get_importance_trace

from pvae.infer.program import analyse, go_sequential, log_weight_terms
from pvae.infer.sites import LogWeightTerms, Program


class ImportanceWeightedELBO(ELBO):
    r"""pvae's per-datapoint importance-weighted (alpha = 0) and Rényi-alpha bound as a Pyro ELBO.

    For each datapoint b, with k particles and log-weights
    log w_i = log p(x_b|z_i) + beta (log p(z_i) - log q(z_i|x_b)),

    .. math:: L_b = \frac{1}{1-\alpha} \log \frac{1}{k} \sum_i w_i^{1-\alpha}

    where beta is the scale on the latent sites *relative to* the observed ones (beta-VAE,
    KL warm-up). The scale on the observed sites (subsampling, a global ``poutine.scale``)
    multiplies L_b *outside* the logsumexp: loss = -s * sum_b L_b. Pyro's ``RenyiELBO``
    instead puts every scale inside its logsumexp, and sums over the batch before it whenever a
    site sits outside the data plate; here that is an error.

    ``differentiable_loss`` makes it usable with any torch optimizer (and DDP). Subclasses
    change `bound` (MIWAE, CIWAE) or the gradient estimator (DReG, STL, PIWAE).
    """

    def __init__(self, num_particles: int = 5, alpha: float = 0.0, max_plate_nesting=float("inf"),
                 data_plate: str | None = None):
        if int(num_particles) != num_particles or num_particles < 1:
            raise ValueError(f"the number of importance samples k must be an integer >= 1, got {num_particles}")
        if alpha == 1:
            raise ValueError("alpha = 1 is the ELBO's limit, not a Rényi bound: use objective 'elbo'")
        # Pyro's base class only holds num_particles here: pvae draws particles itself, along a
        # dim left of ``plate_nesting`` plates (Pyro's max_plate_nesting would count that dim too)
        super().__init__(num_particles=int(num_particles))
        self.plate_nesting = max_plate_nesting
        self.alpha = float(alpha)
        self.data_plate = data_plate
        self.program: Program | None = None  # what pvae.fit's analysis found, else found on first use

    def check(self, program: Program) -> None:
        """A per-datapoint bound differentiated through reparameterized draws: refuse global latents
        and non-reparameterized guide sites (which would silently get no gradient)."""
        name = type(self).__name__
        if program.global_sites:
            raise ValueError(f"{name} is a per-datapoint bound, and latent site {program.global_sites[0]!r} is outside "
                             f"the data plate {program.data_plate!r} (a global latent): train with 'elbo', 'mf-elbo' "
                             "or 'enum-elbo', which handle global latents (pvae's evaluator conditions on their guide mean)")
        if program.not_reparameterized:
            raise ValueError(f"{name} needs reparameterized latents, and the guide's site "
                             f"{program.not_reparameterized[0]!r} is not: train with 'elbo' or 'enum-elbo' (pvae's "
                             "evaluator still estimates its log p(x))")

    def _get_trace(self, model, guide, args, kwargs):
        """One (model, guide) trace pair, as Pyro's ELBO base class expects."""
        return get_importance_trace("flat", self._nesting(model, guide, args, kwargs), model, guide, args, kwargs)

    def _program(self, model, guide, args, kwargs) -> Program:
        if self.program is None:
            self.program = analyse(model, guide, args, kwargs, data_plate=self.data_plate, check_vectorize=False)
            self.check(self.program)
        if self.plate_nesting != float("inf"):
            self.program.nesting = int(self.plate_nesting)
        return self.program

    def _nesting(self, model, guide, args, kwargs) -> int:
        return self._program(model, guide, args, kwargs).nesting

    def bound(self, log_w: torch.Tensor) -> torch.Tensor:
        """The per-datapoint bound from scaled log-weights of shape ``(k, batch)``."""
        a = 1.0 - self.alpha
        return (torch.logsumexp(a * log_w, dim=0) - math.log(log_w.shape[0])) / a

    def _scales(self, t: LogWeightTerms) -> tuple[float, float]:
        if t.latent_scale is None or t.obs_scale is None:
            raise ValueError(f"{type(self).__name__} needs one poutine.scale on all observed sites and one on all "
                             "latent sites (a beta or warm-up on every latent of model and guide alike); this "
                             "program scales its sites differently or per datapoint, and an importance-weighted "
                             "bound has no such weighting: train with 'elbo' (Trace_ELBO honours every scale)")
        return t.latent_scale, t.obs_scale

    def per_datapoint(self, model, guide, *args, **kwargs):
        """``(L, s)``: the bound L_b of each datapoint (shape ``(batch,)``) and the outer scale s."""
        program = self._program(model, guide, args, kwargs)
        try:
            t = log_weight_terms(model, guide, *args, num_particles=self.num_particles, program=program,
                                 complete=False, **kwargs)
        except Exception as e:  # noqa: BLE001 - first use outside pvae.fit: nets that take no particle dim
            if program.checked or not program.vectorize:
                raise
            go_sequential(program, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            t = log_weight_terms(model, guide, *args, num_particles=self.num_particles, program=program,
                                 complete=False, **kwargs)
        program.checked = True
        latent_scale, obs_scale = self._scales(t)
        beta = latent_scale / obs_scale
        return self.bound(t.log_px_z + beta * (t.log_pz - t.log_qz)), obs_scale

    def differentiable_loss(self, model, guide, *args, **kwargs):
        bound, scale = self.per_datapoint(model, guide, *args, **kwargs)
        return -scale * bound.sum()

    def loss(self, model, guide, *args, **kwargs):
        with torch.no_grad():
            return self.differentiable_loss(model, guide, *args, **kwargs).item()

    def loss_and_grads(self, model, guide, *args, **kwargs):
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        loss.backward()
        return loss.item()


def _groups(what: str, M, K) -> tuple[int, int]:
    for name, v in (("M", M), ("K", K)):
        if int(v) != v or v < 1:
            raise ValueError(f"{what}'s {name} must be an integer >= 1, got {v}")
    return int(M), int(K)


class MultiImportanceWeightedELBO(ImportanceWeightedELBO):
    r"""MIWAE (Rainforth et al. 2018): the average of M independent K-sample IWAE bounds,
    :math:`\frac1M \sum_m \log \frac1K \sum_k w_{mk}`, from M x K particles."""

    def __init__(self, M: int = 8, K: int = 8, **kwargs):
        self.M, self.K = _groups("MIWAE", M, K)
        super().__init__(num_particles=self.M * self.K, **kwargs)

    def bound(self, log_w):
        g = log_w.reshape(self.M, self.K, -1)
        return (torch.logsumexp(g, dim=1) - math.log(self.K)).mean(0)


class CombinationIWAE(ImportanceWeightedELBO):
    r"""CIWAE (Rainforth et al. 2018): :math:`\beta\, \mathrm{ELBO} + (1-\beta)\, \mathrm{IWAE}_k`,
    both from the same k particles, 0 <= beta <= 1."""

    def __init__(self, num_particles: int = 8, beta: float = 0.5, **kwargs):
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"CIWAE's beta must lie in [0, 1], got {beta}")
        super().__init__(num_particles=num_particles, **kwargs)
        self.beta = float(beta)

    def bound(self, log_w):
        iwae = torch.logsumexp(log_w, dim=0) - math.log(log_w.shape[0])
        return self.beta * log_w.mean(0) + (1.0 - self.beta) * iwae
