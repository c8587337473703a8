r"""Ex-post samplers: generate from any trained model with a continuous latent by sampling a
density fitted to its aggregate posterior, not the prior (Ghosh et al. 2020; pythae's
``GaussianMixtureSampler``).

A VAE whose KL term is weak, and an autoencoder that has no prior at all, put their codes
E_q[z|x] where the prior has little mass: decoding z ~ p(z) then lands off the data. Fitting a
Gaussian mixture to the codes of the training set,

.. math:: \hat q(z) = \sum_{m=1}^{M} w_m \, \mathcal N(z; \mu_m, \Sigma_m)
   \approx \frac1N \sum_n \delta(z - \mathbb E_q[z \mid x_n]),

by expectation-maximisation and decoding z ~ q-hat gives samples from where the decoder was
trained. ``pvae.fit_sampler(model, data, kind="gmm").sample(n)`` returns decoded images.
"""

from __future__ import annotations

import math

import torch

from pvae.util.validate import check_positive_int


class GaussianMixture:
    """A full-covariance Gaussian mixture fitted by EM (k-means++-style start, ``reg`` added to
    every covariance's diagonal)."""

    def __init__(self, components: int = 10, iterations: int = 100, reg: float = 1e-4, seed: int = 0):
        self.components = check_positive_int("components", components)
        self.iterations, self.reg, self.seed = check_positive_int("iterations", iterations), reg, seed

    def _log_resp(self, z):
        comp = torch.distributions.MultivariateNormal(self.means, scale_tril=self.scale_tril)
        log_p = comp.log_prob(z[:, None, :]) + self.weights.log()
        return log_p, torch.logsumexp(log_p, 1)

    def fit(self, z: torch.Tensor) -> "GaussianMixture":
        z = z.double()
        n, d = z.shape
        M = min(self.components, n)
        g = torch.Generator().manual_seed(self.seed)
        centres = [z[torch.randint(n, (1,), generator=g)].squeeze(0)]
        for _ in range(1, M):  # k-means++: far points are likelier centres
            d2 = torch.cdist(z, torch.stack(centres)).min(1).values ** 2
            centres.append(z[torch.multinomial(d2 / d2.sum(), 1, generator=g)].squeeze(0))
        self.means = torch.stack(centres)
        cov = torch.cov(z.T).reshape(d, d) + self.reg * torch.eye(d, dtype=z.dtype)
        self.scale_tril = torch.linalg.cholesky(cov).expand(M, d, d).clone()
        self.weights = torch.full((M,), 1.0 / M, dtype=z.dtype)
        self.log_likelihood = []
        for _ in range(self.iterations):
            log_p, total = self._log_resp(z)
            self.log_likelihood.append(float(total.mean()))
            r = (log_p - total[:, None]).exp()                      # E-step: responsibilities (n, M)
            nk = r.sum(0) + 1e-10
            self.weights = nk / n                                   # M-step
            self.means = (r.T @ z) / nk[:, None]
            diff = z[:, None, :] - self.means[None]
            cov = torch.einsum("nm,nmi,nmj->mij", r, diff, diff) / nk[:, None, None]
            self.scale_tril = torch.linalg.cholesky(cov + self.reg * torch.eye(d, dtype=z.dtype))
            if len(self.log_likelihood) > 1 and abs(self.log_likelihood[-1] - self.log_likelihood[-2]) < 1e-6:
                break
        return self

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return self._log_resp(z.double())[1].float()

    def sample(self, n: int, generator=None) -> torch.Tensor:
        which = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        eps = torch.randn(n, self.means.shape[1], dtype=self.means.dtype, generator=generator)
        return (self.means[which] + (self.scale_tril[which] @ eps[..., None]).squeeze(-1)).float()


class LatentSampler:
    """A density over a model's latent codes plus the model's decoder: ``.sample(n)`` gives
    decoded datapoints (E[x|z]), ``.sample_latents(n)`` the codes."""

    def __init__(self, model, density):
        self.model, self.density = model, density

    @torch.no_grad()
    def sample_latents(self, n: int, seed: int | None = None) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed) if seed is not None else None
        return self.density.sample(check_positive_int("n", n), generator=g)

    @torch.no_grad()
    def sample(self, n: int, seed: int | None = None) -> torch.Tensor:
        z = self.sample_latents(n, seed)
        return self.model.decode(z.to(self.model.device))


SAMPLERS = ("gmm",)


@torch.no_grad()
def fit_sampler(model, data, kind: str = "gmm", *, components: int = 10, iterations: int = 100, seed: int = 0,
                batch_size: int = 1000) -> LatentSampler:
    """Fit an ex-post sampler to the codes E_q[z|x] (``model.encode``) of ``data``.

    ``kind="gmm"``: a full-covariance Gaussian mixture of ``components`` components. Works for
    every model with a continuous latent and ``encode``/``decode`` (VAE, AE, ConditionalVAE's
    z aside); returns a [`LatentSampler`][pvae.analysis.samplers.LatentSampler].
    """
    from pvae.analysis.evaluation import encodings
    from pvae.data.datasets import as_tensors

    if kind not in SAMPLERS:
        raise ValueError(f"unknown sampler {kind!r}; choose one of {list(SAMPLERS)}")
    if not (hasattr(model, "encode") and hasattr(model, "decode")) or getattr(model, "needs_labels", False) \
            or hasattr(model, "codebook") or hasattr(model, "num_vars"):
        raise ValueError(f"an ex-post sampler needs a model with a continuous latent and encode/decode; "
                         f"{type(model).__name__} has none")
    from pvae.infer.sites import diverged_said
    from pvae.util.validate import check_size

    components = check_size("components", components)
    x = as_tensors(data)[0]
    if x[:1].numel() != math.prod(model.x_shape):
        raise ValueError(f"the data's datapoints have shape {tuple(x.shape[1:])}, and {type(model).__name__} takes "
                         f"{tuple(model.x_shape)}: fit the sampler to data like the model's training data")
    if x.shape[0] < max(components, 2):
        raise ValueError(f"a Gaussian mixture of {components} components needs at least {max(components, 2)} codes to "
                         f"fit, and the data have {x.shape[0]} datapoints: pass more data or fewer components")
    with diverged_said():
        z = encodings(model, x.reshape((x.shape[0],) + tuple(model.x_shape)), batch_size)
    if z.dim() != 2 or not torch.is_floating_point(z):
        raise ValueError(f"an ex-post sampler needs continuous codes of shape (n, D), got {tuple(z.shape)}")
    if not math.isfinite(float(z.abs().max())):
        raise FloatingPointError("the model's codes are not finite: cannot fit a sampler to them")
    return LatentSampler(model, GaussianMixture(components, iterations, seed=seed).fit(z))
