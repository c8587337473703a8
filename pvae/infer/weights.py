"""What a set of log-weights says: the Monte Carlo standard error of log mean w, the effective
sample size, and the standard error of a mean over datapoints. Shared by importance sampling
(`pvae.infer.importance`) and AIS (`pvae.infer.ais`)."""

from __future__ import annotations

import math

import torch


def standard_error(values: torch.Tensor) -> float:
    """The standard error of the mean of per-datapoint values: sd / sqrt(n); NaN for one value
    (one datapoint says nothing of the spread: never a standard error of 0)."""
    n = values.numel()
    return float(values.double().std() / math.sqrt(n)) if n > 1 else float("nan")


def mc_standard_error(log_weights: torch.Tensor) -> torch.Tensor:
    r"""Per datapoint, the delta-method Monte Carlo standard error of the importance-sampled
    log p(x) = log mean_i w_i from log-weights ``(k, n)``: with r_i = w_i / mean(w),
    se = sqrt(Var(r) / k), where Var(r) = k sum_i wn_i^2 - 1 for the normalized weights wn."""
    k = log_weights.shape[0]
    if k < 2:  # one draw says nothing of the sampler's spread
        return torch.full(log_weights.shape[1:], float("nan"), device=log_weights.device)
    wn = torch.softmax(log_weights.double(), 0)
    var = (k * (wn ** 2).sum(0) - 1.0).clamp_min(0.0) * k / max(k - 1, 1)
    return (var / k).sqrt().float()


def ess(log_weights: torch.Tensor) -> torch.Tensor:
    """Importance-sampling effective sample size (sum w)^2 / sum w^2 along dim 0."""
    return torch.exp(2 * torch.logsumexp(log_weights, 0) - torch.logsumexp(2 * log_weights, 0))
