r"""Pyro's own Rényi-alpha bound (``"pyro-renyi"``), kept as a cross-check of pvae's.

.. math:: \mathcal L_\alpha = \frac{1}{1-\alpha} E\Big[\log \frac1k \sum_i w_i^{1-\alpha}\Big]

Pyro's ``RenyiELBO`` puts ``poutine.scale`` factors inside its logsumexp and bounds the whole batch
jointly when a site lies outside the data plate; pvae's per-datapoint version is
[`pvae.ImportanceWeightedELBO`][pvae.ImportanceWeightedELBO] with ``alpha``.
"""

from __future__ import annotations

import math

import torch
from pyro.infer import RenyiELBO
from pyro.infer.util import get_dependent_plate_dims, torch_sum


class PyroRenyiELBO(RenyiELBO):
    """Pyro's ``RenyiELBO``, unchanged in value, plus the ``differentiable_loss`` it lacks, so that
    pvae's trainer can run it as a cross-check. Its semantics are Pyro's: scales inside the
    logsumexp, and one joint bound for the batch when any site is outside the data plate."""

    def differentiable_loss(self, model, guide, *args, **kwargs):
        particles = []
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            sum_dims = get_dependent_plate_dims(model_trace.nodes.values())
            e = 0.0
            for site in model_trace.nodes.values():
                if site["type"] == "sample":
                    e = e + torch_sum(site["log_prob"], sum_dims)
            for name, site in guide_trace.nodes.items():
                if site["type"] == "sample":
                    if not site["is_observed"] and not site["fn"].has_rsample:
                        raise ValueError(f"pyro-renyi's differentiable_loss needs reparameterized latents; "
                                         f"site {name!r} is not")
                    e = e - torch_sum(site["log_prob"], sum_dims)
            particles.append(e)
        vectorized = self.vectorize_particles and self.num_particles > 1
        elbo_particles = particles[0] if vectorized else torch.stack(particles)
        a = 1.0 - self.alpha
        log_mean_weight = torch.logsumexp(a * elbo_particles, dim=0) - math.log(self.num_particles)
        return -log_mean_weight.sum() / a
