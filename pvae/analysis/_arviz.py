"""The one place pvae touches arviz (pinned to 0.x: 1.x needs Python >= 3.12 and changed
``psislw``'s sign convention). Imported lazily: arviz pulls in xarray."""

from __future__ import annotations

import warnings

import numpy as np


def psis_khat(log_weights: np.ndarray) -> np.ndarray:
    """Pareto k-hat of each row of ``log_weights`` (shape ``(n, k)``; log w = log p - log q)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # arviz's refactor FutureWarning, small-sample warnings
        import arviz as az

        _, khat = az.psislw(np.asarray(log_weights, dtype=np.float64), reff=1.0)
    return np.asarray(khat, dtype=np.float64)
