"""What users build with a trained model: anomaly scores and their AUROC, denoising and inpainting.

Anomaly detection by likelihood: a datapoint the model finds improbable is suspicious, so its
score is -log p(x), estimated by importance sampling ([`pvae.log_likelihood`][pvae.log_likelihood]). AUROC is the
probability that a random anomaly scores higher than a random normal datapoint (ties count
half), computed exactly from the scores (the Mann-Whitney U statistic).

A known limit (Nalisnick et al. 2019, "Do deep generative models know what they don't know?"):
likelihoods favour simple images, so an anomaly class with few lit pixels (Fashion-MNIST's
trousers, sandals, sneakers) can score *more* probable than the training classes and give an
AUROC below 0.5. ``docs/applications.md`` reports the AUROC of every held-out class.
"""

from __future__ import annotations

import math

import torch

from pvae.infer.importance import PARTICLES_PER_PASS, log_likelihood
from pvae.util.tensors import device_of
from pvae.util.validate import check_positive_int


def anomaly_scores(model, data, k: int = 1000, **kwargs) -> torch.Tensor:
    """-log p(x) per datapoint (higher: more anomalous); ``kwargs`` go to [`pvae.log_likelihood`][pvae.log_likelihood]."""
    return -log_likelihood(model, data, k=k, **kwargs)


def auroc(scores, is_anomaly) -> float:
    """Area under the ROC curve of ``scores`` for the boolean labels ``is_anomaly``."""
    scores, is_anomaly = torch.as_tensor(scores, dtype=torch.float64), torch.as_tensor(is_anomaly, dtype=torch.bool)
    if scores.shape != is_anomaly.shape or scores.dim() != 1:
        raise ValueError(f"scores {tuple(scores.shape)} and labels {tuple(is_anomaly.shape)} must be two equal 1-d shapes")
    pos, neg = scores[is_anomaly], scores[~is_anomaly]
    bad = ~torch.isfinite(scores)
    if bool(bad.any()):
        raise ValueError(f"scores hold {int(bad.sum())} non-finite values (NaN or inf), "
                         f"the first at {int(bad.nonzero()[0, 0])}: AUROC needs a finite score per datapoint")
    if pos.numel() == 0 or neg.numel() == 0:
        raise ValueError("AUROC needs at least one anomaly and one normal datapoint")
    # ranks with ties averaged: U = sum of the anomalies' ranks - n_pos (n_pos + 1) / 2
    order = torch.cat([pos, neg])
    ranks = torch.empty_like(order)
    sorted_vals, idx = order.sort()
    ranks[idx] = torch.arange(1, order.numel() + 1, dtype=torch.float64)
    for v in sorted_vals.unique():  # average the ranks of ties
        tie = order == v
        if int(tie.sum()) > 1:
            ranks[tie] = ranks[tie].mean()
    u = ranks[: pos.numel()].sum() - pos.numel() * (pos.numel() + 1) / 2
    return float(u / (pos.numel() * neg.numel()))


@torch.no_grad()
def inpaint(model, x, observed, k: int = 500, fill=None, proposal: str = "mixture") -> torch.Tensor:
    r"""Impute the missing values of ``x`` from its observed ones (``observed``: a boolean mask of
    x's shape, True where a value is known), for a pvae model with one latent site (``VAE``).

    The posterior over z given the observed values alone,
    p(z | x_obs) ∝ p(z) p(x_obs | z), is approximated by self-normalised importance sampling with
    k draws z_i from a proposal r, weighted by w_i = p(z_i) p(x_obs | z_i) / r(z_i), in which
    only observed values enter the likelihood. Missing values become sum_i w~_i E[x_miss | z_i];
    observed values are kept as they are.

    ``proposal``: ``"guide"`` is q(z | x with its missing values set to ``fill``, default the
    observed values' mean per datapoint); ``"prior"`` is p(z); ``"mixture"`` (default) draws half
    of the particles from each and weighs by the mixture density r = (q + p) / 2 (defensive
    importance sampling). The guide never saw half-filled inputs, so on its own it can propose
    far from p(z | x_obs): on binarized Fashion-MNIST (VAE 784-200-200-50, bottom half missing,
    k = 1000) it gave a squared error of 0.183 on the missing pixels, the prior 0.143, the mixture
    0.143 and the mean image 0.180 (``docs/applications.md``).
    """
    if proposal not in ("guide", "prior", "mixture"):
        raise ValueError(f"unknown proposal {proposal!r}; choose 'guide', 'prior' or 'mixture'")
    k = check_positive_int("k", k)
    if not all(hasattr(model, a) for a in ("posterior", "prior", "decoder_params", "x_shape")):
        raise TypeError(f"inpaint needs a pvae model with one latent site (such as pvae.VAE), got {type(model).__name__}")
    x, observed = torch.as_tensor(x), torch.as_tensor(observed)
    if tuple(observed.shape) != tuple(x.shape):
        raise ValueError(f"observed must be a mask of x's shape {tuple(x.shape)}, got {tuple(observed.shape)}")
    if observed.dtype != torch.bool:
        if observed.is_complex() or not bool(((observed == 0) | (observed == 1)).all()):
            raise ValueError("observed must be a boolean mask (True where a value is known), or 0/1 values")
        observed = observed.bool()
    if x.dim() < 1 or x[:1].numel() != math.prod(model.x_shape):
        raise ValueError(f"x of shape {tuple(x.shape)} does not hold datapoints of the model's x_shape "
                         f"{tuple(model.x_shape)}")
    device = device_of(model)
    shape = (x.shape[0],) + tuple(model.x_shape)
    x, observed = x.reshape(shape).to(device), observed.reshape(shape).to(device)
    x = x if x.is_floating_point() else x.to(torch.get_default_dtype())
    obs = observed.to(x.dtype)
    if fill is None:
        dims = tuple(range(1, x.dim()))
        fill = ((x * obs).sum(dims, keepdim=True) / obs.sum(dims, keepdim=True).clamp(min=1))
    guide_input = x * obs + torch.as_tensor(fill, dtype=x.dtype, device=device) * (1 - obs)
    chunk = max(1, PARTICLES_PER_PASS // k)  # k particles x chunk datapoints per pass bound the memory
    return torch.cat([_inpaint_batch(model, x[s:s + chunk], observed[s:s + chunk], guide_input[s:s + chunk], k,
                                     proposal) for s in range(0, x.shape[0], chunk)])


def _inpaint_batch(model, x, observed, guide_input, k, proposal):
    """`inpaint` for one batch of datapoints, already on the model's device and shape."""
    obs = observed.to(x.dtype)
    q, p = model.posterior(guide_input), model.prior(x.shape[0])
    n_q = {"guide": k, "prior": 0, "mixture": k // 2}[proposal]
    z = torch.cat([q.sample((n_q,)), p.sample((k - n_q,))])  # (k, n, D)
    log_q, log_p = q.log_prob(z), p.log_prob(z)
    log_r = {"guide": log_q, "prior": log_p, "mixture": torch.logaddexp(log_q, log_p) - math.log(2)}[proposal]
    out = model.decoder_params(z)
    event_dims = tuple(range(2, 2 + len(model.x_shape)))
    log_px_obs = (model.likelihood.value_log_prob(out, x) * obs).sum(event_dims)
    w = torch.softmax(log_px_obs + log_p - log_r, dim=0).reshape((k, x.shape[0]) + (1,) * len(model.x_shape))
    imputed = (w * model.likelihood.mean(out)).sum(0)
    return torch.where(observed, x, imputed)


def corrupt(x, noise: float = 0.3, kind: str = "mask", seed: int = 0) -> torch.Tensor:
    """A corrupted copy of ``x`` for denoising: ``"mask"`` zeroes each value with probability
    ``noise`` (the denoising AE's training corruption), ``"flip"`` flips binary values with
    probability ``noise``, ``"gaussian"`` adds N(0, noise^2) and clips to [0, 1]. Seeded, so
    every model is shown the same corrupted data; denoise with ``model.reconstruct(corrupted)``."""
    if not 0 <= noise < 1 and kind != "gaussian":
        raise ValueError(f"noise must lie in [0, 1) for {kind!r} corruption, got {noise}")
    g = torch.Generator().manual_seed(seed)
    x = torch.as_tensor(x)
    u = torch.rand(x.shape, generator=g).to(x.device)
    if kind == "mask":
        return x * (u >= noise)
    if kind == "flip":
        return torch.where(u < noise, 1 - x, x)
    if kind == "gaussian":
        return (x + noise * torch.randn(x.shape, generator=g).to(x.device)).clamp(0, 1)
    raise ValueError(f"unknown corruption {kind!r}; choose 'mask', 'flip' or 'gaussian'")
