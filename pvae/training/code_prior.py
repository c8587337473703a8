"""Fitting the VQ-VAE's autoregressive code prior ([`pvae.nn.code_prior.CodePrior`][pvae.nn.code_prior.CodePrior]) to the codes
of the training set, after the autoencoder is trained: what makes a VQ-VAE sample."""

from __future__ import annotations

import math

import torch

from pvae.nn.code_prior import CodePrior
from pvae.util.progress import bar as progress_bar
from pvae.util.progress import say
from pvae.util.validate import check_positive_int


def _codes(vqvae, data) -> torch.Tensor:
    from pvae.analysis.evaluation import encodings
    from pvae.data.datasets import as_tensors

    x = as_tensors(data)[0]
    return encodings(vqvae, x.reshape((x.shape[0],) + tuple(vqvae.x_shape))).to(vqvae.codebook.device)


def fit_code_prior(vqvae, data, test=None, *, epochs: int = 20, batch_size: int = 100, lr: float = 1e-3,
                   hidden: int = 256, seed: int = 0, progress: bool = True) -> dict:
    """Fit an autoregressive prior to the codes of ``data`` under the trained ``vqvae`` and attach
    it (``vqvae.code_prior``; saved with the model), so that ``vqvae.sample(n)`` generates.

    Returns ``{"prior", "train_nll": [per epoch], "test_nll", "uniform_nll", "codes_used"}``: NLLs
    in nats per datapoint (per row of codes); the uniform baseline is L log K.
    """
    check_positive_int("epochs", epochs)
    check_positive_int("batch_size", batch_size)
    check_positive_int("hidden", hidden)
    if not hasattr(vqvae, "codebook"):
        raise TypeError(f"fit_code_prior needs a VQVAE, got {type(vqvae).__name__}")
    torch.manual_seed(seed)
    codes = _codes(vqvae, data)
    test_codes = _codes(vqvae, test) if test is not None else None
    prior = CodePrior(vqvae.num_latents, vqvae.num_codes, hidden).to(codes.device)
    optimizer = torch.optim.Adam(prior.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    history = []
    for epoch in range(epochs):
        perm = torch.randperm(len(codes), generator=g).to(codes.device)
        total = 0.0
        for idx in progress_bar(perm.split(batch_size), progress=progress, desc=f"code prior {epoch + 1}/{epochs}"):
            loss = -prior.log_prob(codes[idx]).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(idx)
        history.append(total / len(codes))
        if progress:
            say(f"code prior epoch {epoch + 1}/{epochs}  train NLL {history[-1]:.3f} nats")
    prior.eval()
    vqvae.code_prior = prior
    vqvae.config["code_prior"] = {"hidden": hidden}
    with torch.no_grad():
        test_nll = float(-prior.log_prob(test_codes).mean()) if test_codes is not None else None
    return {"prior": prior, "train_nll": history, "test_nll": test_nll,
            "uniform_nll": vqvae.num_latents * math.log(vqvae.num_codes),
            "codes_used": int(codes.unique().numel())}
