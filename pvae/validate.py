"""Checks on what users pass in, run before any training: each failure is one ``ValueError`` or
``TypeError`` naming the problem (the CLI prints it as one line and exits with status 2)."""

from __future__ import annotations

import torch


def check_data(x: torch.Tensor, pair=None, what: str = "training data") -> None:
    """Finite values of a real dtype, at least one datapoint, inside the likelihood's support."""
    if x.is_complex() or not torch.is_floating_point(x):
        raise TypeError(f"{what} must be real numbers, got dtype {x.dtype}")
    if x.dim() < 2:
        raise ValueError(f"{what} must have a leading datapoint dim and at least one value per datapoint, "
                         f"got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{what}: the dataset is empty")
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        bad = (~finite).reshape(x.shape[0], -1).any(1).nonzero()[0, 0].item()
        raise ValueError(f"{what} contain {int((~finite).sum())} non-finite values (NaN or inf), "
                         f"the first in datapoint {bad}")
    lik = getattr(pair, "likelihood", None)
    support = getattr(lik, "support", None)
    if support is not None:
        lo, hi = float(x.min()), float(x.max())
        if lo < support[0] or hi > support[1]:
            raise ValueError(f"{what} lie in [{lo:g}, {hi:g}], but the {lik.name} likelihood needs values in "
                             f"[{support[0]:g}, {support[1]:g}]: rescale (x / 255) or choose likelihood='gaussian'")


def check_positive_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or int(value) != value or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)
