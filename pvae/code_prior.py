r"""A learned prior over a VQ-VAE's codes: what makes it a generative model.

A VQ-VAE trains with a uniform prior over its code rows c = (c_1, ..., c_L), c_i in {1..K}; decoding
uniform codes gives noise, because the encoder uses a small, structured part of the K^L rows. The
fix of van den Oord et al. (2017) is a second model, fitted after the autoencoder to the codes of
the training set, that is autoregressive:

.. math:: p_\psi(c) = \prod_{i=1}^{L} p_\psi(c_i \mid c_{<i}), \qquad
   \psi^* = \arg\max_\psi \sum_n \log p_\psi(c(x_n)).

The paper uses a PixelCNN over a 2-D code grid; pvae's MLP VQ-VAE has a row of L codes, so the
prior here is a masked MLP (MADE, Germain et al. 2015) on one-hot codes: output i sees only inputs
< i, so one pass gives every conditional, and sampling takes L passes. Its test negative
log-likelihood (nats per image) is reported next to the uniform baseline L log K.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .progress import bar as progress_bar, say
from .validate import check_positive_int


class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed 0/1 mask (out_features x in_features)."""

    def __init__(self, mask: torch.Tensor):
        super().__init__(mask.shape[1], mask.shape[0])
        self.register_buffer("mask", mask.float())

    def forward(self, x):
        return F.linear(x, self.weight * self.mask, self.bias)


class CodePrior(nn.Module):
    """p(c) = prod_i p(c_i | c_<i) over ``num_latents`` codes of ``num_codes`` values each."""

    def __init__(self, num_latents: int, num_codes: int, hidden: int = 256):
        super().__init__()
        L, K = num_latents, num_codes
        self.num_latents, self.num_codes, self.hidden = L, K, hidden
        inputs = torch.arange(L).repeat_interleave(K)   # the position each one-hot input belongs to
        units = torch.arange(hidden) % max(L - 1, 1)     # a hidden unit of degree d sees positions <= d
        self.first = MaskedLinear(units[:, None] >= inputs[None, :])
        self.second = MaskedLinear(units[:, None] >= units[None, :])
        self.out = MaskedLinear(inputs[:, None] > units[None, :])      # output i: hidden of degree < i
        self.skip = MaskedLinear(inputs[:, None] > inputs[None, :])    # and inputs of positions < i
        if L == 1:  # a single code: p(c_1) is a learned categorical (the bias)
            self.first.mask.zero_()

    def logits(self, codes: torch.Tensor) -> torch.Tensor:
        """``(n, L)`` integer codes -> ``(n, L, K)`` logits of p(c_i | c_<i)."""
        x = F.one_hot(codes.long(), self.num_codes).float().flatten(1)
        h = torch.relu(self.second(torch.relu(self.first(x))))
        return (self.out(h) + self.skip(x)).reshape(codes.shape[0], self.num_latents, self.num_codes)

    def log_prob(self, codes: torch.Tensor) -> torch.Tensor:
        """log p(c) per row (nats), shape ``(n,)``."""
        logp = torch.log_softmax(self.logits(codes), -1)
        return logp.gather(-1, codes.long().unsqueeze(-1)).squeeze(-1).sum(-1)

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """n code rows drawn one position at a time, shape ``(n, L)``."""
        codes = torch.zeros(n, self.num_latents, dtype=torch.long, device=self.out.weight.device)
        for i in range(self.num_latents):
            codes[:, i] = torch.distributions.Categorical(logits=self.logits(codes)[:, i]).sample()
        return codes


def _codes(vqvae, data) -> torch.Tensor:
    from .data import as_tensors
    from .evaluate import encodings

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
