r"""Disentanglement, measured: the mutual information gap (MIG, Chen et al. 2018).

For a dataset whose factors of variation v_1..v_K are known (``pvae.load_dataset("shapes")``),
encode every datapoint to its posterior mean z = E_q[z|x], discretise each latent dimension
into ``bins`` equal-width bins, and compute the mutual information I(z_j; v_k) of every pair.
For each factor, the gap between the most and second most informative latent dimension,
normalised by the factor's entropy, says how much a single dimension captures it alone:

.. math:: \mathrm{MIG} = \frac1K \sum_{k=1}^{K} \frac{I(z_{j^{(1)}_k}; v_k) - I(z_{j^{(2)}_k}; v_k)}{H(v_k)}
   \in [0, 1].

1 means every factor is carried by one latent dimension and by no other; 0 that no factor is
(the factor is spread over dimensions, or not captured at all).
"""

from __future__ import annotations

import torch

from pvae.util.validate import check_positive_int


def discretize(codes: torch.Tensor, bins: int = 20) -> torch.Tensor:
    """Each column of ``codes`` (n, D) into ``bins`` equal-width bins between its min and max."""
    lo, hi = codes.min(0).values, codes.max(0).values
    width = torch.where(hi > lo, (hi - lo) / bins, torch.ones_like(hi))
    return ((codes - lo) / width).floor().clamp(0, bins - 1).long()


def _entropy(a: torch.Tensor) -> float:
    p = torch.bincount(a).double()
    p = p[p > 0] / len(a)
    return float(-(p * p.log()).sum())


def mutual_information(a: torch.Tensor, b: torch.Tensor) -> float:
    """I(a; b) in nats of two integer sequences, from their joint histogram."""
    nb = int(b.max()) + 1
    joint = torch.bincount(a * nb + b).double()
    joint = joint[joint > 0] / len(a)
    return _entropy(a) + _entropy(b) - float(-(joint * joint.log()).sum())


def mig_score(codes: torch.Tensor, factors: torch.Tensor, bins: int = 20, names=None) -> dict:
    """MIG of ``codes`` (n, D) against integer ``factors`` (n, K).

    Returns ``{"mig", "per_factor": {name: gap}, "mi": (D, K) tensor, "entropy": (K,) tensor,
    "best": {name: latent dim}}``.
    """
    bins = check_positive_int("bins", bins, minimum=2)  # a code needs two bins to carry information
    codes, factors = torch.as_tensor(codes).float(), torch.as_tensor(factors).long()
    if codes.dim() != 2 or factors.dim() != 2 or len(codes) != len(factors):
        raise ValueError(f"codes (n, D) and factors (n, K) must have the same n, got {tuple(codes.shape)} and "
                         f"{tuple(factors.shape)}")
    if codes.shape[1] < 2:
        raise ValueError("MIG compares the two most informative latent dims: it needs at least 2")
    names = list(names) if names is not None else [f"factor {k}" for k in range(factors.shape[1])]
    z = discretize(codes, bins)
    mi = torch.tensor([[mutual_information(z[:, j], factors[:, k]) for k in range(factors.shape[1])]
                       for j in range(z.shape[1])])
    entropy = torch.tensor([_entropy(factors[:, k]) for k in range(factors.shape[1])])
    top = mi.sort(0, descending=True)
    gaps = (top.values[0] - top.values[1]) / entropy.clamp_min(1e-12)
    keep = entropy > 0  # a constant factor carries nothing to capture
    return {"mig": float(gaps[keep].mean()), "per_factor": dict(zip(names, gaps.tolist())), "mi": mi,
            "entropy": entropy, "best": dict(zip(names, top.indices[0].tolist()))}


@torch.no_grad()
def mig(model, data, bins: int = 20, batch_size: int = 1000) -> dict:
    """MIG of ``model``'s posterior means (``model.encode``) on ``data``, a dataset with known
    factors (``data.factors``, such as ``pvae.load_dataset("shapes", "test")``); see
    [`mig_score`][pvae.analysis.disentangle.mig_score] for what comes back."""
    factors = getattr(data, "factors", None)
    if factors is None:
        raise ValueError("MIG needs data with known factors (data.factors), e.g. pvae.load_dataset('shapes', 'test')")
    if not hasattr(model, "encode"):
        raise ValueError(f"MIG needs a model with encode(x); {type(model).__name__} has none")
    from pvae.analysis.evaluation import encodings

    codes = encodings(model, data.eval_x(), batch_size)
    return mig_score(codes.reshape(len(codes), -1), factors, bins, getattr(data, "factor_names", None))
