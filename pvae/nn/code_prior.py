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

import torch
from torch import nn
from torch.nn import functional as F


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
