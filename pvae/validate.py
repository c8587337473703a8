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


def check_labels(y, n: int, pair, what: str = "training data") -> torch.Tensor | None:
    """Labels for a conditional pair: one per datapoint, integers in [0, num_classes) or one-hot
    rows; returns them as a tensor (None when the pair takes no labels)."""
    if not getattr(pair, "needs_labels", False):
        return None
    if y is None:
        raise ValueError(f"{type(pair).__name__} needs labels for the {what}: pass labels=... or (x, y) data")
    y = torch.as_tensor(y)
    if y.shape[0] != n:
        raise ValueError(f"{y.shape[0]} labels for {n} datapoints in the {what}")
    classes = getattr(pair, "num_classes", None)
    if y.dim() == 1:
        if torch.is_floating_point(y) and not bool((y == y.round()).all()):
            raise ValueError(f"labels of the {what} must be integers or one-hot rows")
        y = y.long()
        lowest = -1 if getattr(pair, "missing_labels", False) else 0  # -1: unknown, for semi-supervised pairs
        if classes is not None and (int(y.min()) < lowest or int(y.max()) >= classes):
            unknown = " (or -1 where unknown)" if lowest else ""
            raise ValueError(f"labels of the {what} lie in [{int(y.min())}, {int(y.max())}], outside the "
                             f"{classes} classes [0, {classes - 1}]{unknown}")
    elif y.dim() == 2:
        if classes is not None and y.shape[1] != classes:
            raise ValueError(f"one-hot labels of the {what} have {y.shape[1]} columns, not {classes}")
    else:
        raise ValueError(f"labels must be integers (n,) or one-hot (n, classes), got shape {tuple(y.shape)}")
    return y


def check_size(name: str, value, minimum: int = 1) -> int:
    """A model size (latent_dim, num_classes, ...): an integer >= ``minimum``."""
    if isinstance(value, bool) or int(value) != value or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{name} must be {what}, got {value}")
    return int(value)


def check_hidden(hidden) -> tuple:
    """Hidden layer widths: a non-empty tuple of positive integers."""
    hidden = tuple(int(h) for h in hidden)
    if not hidden or min(hidden) < 1:
        raise ValueError(f"hidden must be a non-empty tuple of positive widths, got {hidden}")
    return hidden
