"""Checks on what users pass in, run before any training: each failure is one ``ValueError`` or
``TypeError`` naming the problem (the CLI prints it as one line and exits with status 2)."""

from __future__ import annotations

import math
import re

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


def _is_integer(value) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not (
            isinstance(value, torch.Tensor) and value.dim() == 0):
        return False
    return math.isfinite(float(value)) and float(value) == int(value)


def check_positive_int(name: str, value, minimum: int = 1) -> int:
    """An integer count >= ``minimum`` (epochs, batch size, k): no floats with a fraction, no
    NaN or inf, no strings."""
    if not _is_integer(value) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_flag(name: str, value, allow_none: bool = False):
    """True or False (None too where ``allow_none``): a string such as "no" is refused, not truthy."""
    if isinstance(value, bool) or (value is None and allow_none):
        return value
    raise TypeError(f"{name} must be True or False{' (or None)' if allow_none else ''}, got {value!r}")


def check_number(name: str, value, *, low: float | None = None, high: float | None = None,
                 open_low: bool = False, allow_none: bool = False) -> float | None:
    """A finite real number (not a string, not NaN or inf) inside [low, high] (``open_low``:
    strictly above ``low``)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not (
            isinstance(value, torch.Tensor) and value.dim() == 0):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    if low is not None and (value <= low if open_low else value < low):
        raise ValueError(f"{name} must be {'>' if open_low else '>='} {low:g}, got {value:g}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high:g}, got {value:g}")
    return value


def check_shape(name: str, shape) -> tuple:
    """A datapoint shape such as ``(784,)`` or ``(1, 28, 28)``: a non-empty tuple of positive integers."""
    if isinstance(shape, (int, float)) or not hasattr(shape, "__iter__"):
        raise TypeError(f"{name} must be a tuple of sizes such as (784,) or (1, 28, 28), got {shape!r}")
    shape = tuple(shape)
    if not shape or not all(_is_integer(s) and s >= 1 for s in shape):
        raise ValueError(f"{name} must be a non-empty tuple of positive integer sizes, got {shape}")
    return tuple(int(s) for s in shape)


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
        binary = (y == 0) | (y == 1)
        if not bool(binary.all()) or not bool((y.sum(1) == 1).all()):
            row = int((~binary.all(1) | (y.sum(1) != 1)).nonzero()[0, 0])
            raise ValueError(f"one-hot labels of the {what} must be rows of 0s with a single 1; row {row} is "
                             f"{y[row].tolist()[:6]}{' ...' if y.shape[1] > 6 else ''}")
    else:
        raise ValueError(f"labels must be integers (n,) or one-hot (n, classes), got shape {tuple(y.shape)}")
    return y


def check_size(name: str, value, minimum: int = 1) -> int:
    """A model size (latent_dim, num_classes, ...): an integer >= ``minimum``."""
    if not _is_integer(value) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{name} must be {what}, got {value}")
    return int(value)


def check_hidden(hidden, allow_empty: bool = False) -> tuple:
    """Hidden layer widths: a non-empty tuple of positive integers (``allow_empty``: or none, a
    linear net)."""
    if isinstance(hidden, (int, float)) or not hasattr(hidden, "__iter__"):
        raise TypeError(f"hidden must be a tuple of layer widths such as (200, 200), got {hidden!r}")
    hidden = tuple(hidden)
    if not (hidden or allow_empty) or not all(_is_integer(h) and h >= 1 for h in hidden):
        raise ValueError(f"hidden must be a non-empty tuple of positive widths (integers), got {hidden}")
    return tuple(int(h) for h in hidden)


def free_memory(device=None) -> int | None:
    """Bytes free for new tensors on ``device`` (the CPU's available memory, or the GPU's), or None."""
    try:
        if device is not None and torch.device(device).type == "cuda":
            return int(torch.cuda.mem_get_info(torch.device(device))[0])
        with open("/proc/meminfo") as f:
            return int(next(line.split()[1] for line in f if line.startswith("MemAvailable"))) * 1024
    except (OSError, StopIteration, RuntimeError, ValueError):
        return None


def check_memory(nbytes: float, what: str, lower: str, device=None) -> None:
    """A ``MemoryError`` in one line, before any allocation, where ``what`` would need more than is
    free (an allocation that large may not fail cleanly: the system can kill the process instead)."""
    free = free_memory(device)
    if free is not None and nbytes > free:
        raise MemoryError(f"out of memory: {what} needs about {nbytes / 2 ** 30:.1f} GiB and {free / 2 ** 30:.1f} GiB "
                          f"are free; lower {lower}")


def out_of_memory(e: BaseException) -> str | None:
    """One line for an allocation that failed: what was asked, what is free, which options to lower."""
    text = str(e)
    if text.startswith("out of memory:"):  # said already (by pvae.fit): its first part
        return text.split(";")[0]
    if not (isinstance(e, (MemoryError, torch.OutOfMemoryError)) or "can't allocate memory" in text
            or "out of memory" in text or "integer multiplication overflow" in text):
        return None
    asked = re.search(r"allocate (\d+) bytes|Tried to allocate ([\d.]+ [KMGT]iB)", text)
    what = ""
    if asked and asked.group(1):
        what = f"one tensor needed {int(asked.group(1)) / 2 ** 30:.1f} GiB"
    elif asked:
        what = f"one tensor needed {asked.group(2)}"
    elif "overflow" in text:
        what = "a tensor's size overflows 64 bits"
    try:
        free = (torch.cuda.mem_get_info()[0] if "CUDA" in text else
                int(next(line.split()[1] for line in open("/proc/meminfo") if line.startswith("MemAvailable"))) * 1024)
        where = f"{free / 2 ** 30:.1f} GiB are free"
    except (OSError, StopIteration, RuntimeError):
        where = "more than is free"
    return f"out of memory: {what or 'an allocation failed'} and {where}"
