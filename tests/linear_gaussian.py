"""A linear-Gaussian latent-variable model (probabilistic PCA) written as a user would write it:
plain model/guide functions plus the module holding their parameters. Its log p(x) and its
posterior are known in closed form, which the tests compare against."""

import math

import pyro
import pyro.distributions as dist
import torch
from torch import nn


class PPCA(nn.Module):
    """p(z) = N(0, I_D), p(x|z) = N(W z + b, sigma^2 I); guide q(z|x) = N(A x + c, diag(s^2))."""

    def __init__(self, x_dim=5, z_dim=2, sigma=0.5, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.W = nn.Parameter(torch.randn(x_dim, z_dim, generator=g))
        self.b = nn.Parameter(torch.randn(x_dim, generator=g))
        self.sigma = sigma
        self.A = nn.Parameter(torch.zeros(z_dim, x_dim))
        self.c = nn.Parameter(torch.zeros(z_dim))
        self.log_s = nn.Parameter(torch.zeros(z_dim))
        self.x_dim, self.z_dim = x_dim, z_dim

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], self.z_dim), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ self.W.T + self.b, self.sigma).to_event(1), obs=x)

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x @ self.A.T + self.c, self.log_s.exp()).to_event(1))

    # -- closed forms ---------------------------------------------------------------------
    @torch.no_grad()
    def exact_log_px(self, x):
        cov = self.W @ self.W.T + self.sigma ** 2 * torch.eye(self.x_dim)
        return dist.MultivariateNormal(self.b, covariance_matrix=cov).log_prob(x)

    def exact_posterior(self):
        """Posterior z|x = N(M (x - b), S): returns (M, S)."""
        S = torch.linalg.inv(torch.eye(self.z_dim) + self.W.T @ self.W / self.sigma ** 2)
        return S @ self.W.T / self.sigma ** 2, S

    @torch.no_grad()
    def set_guide(self, mean_shift=0.0, scale_factor=1.0):
        """The guide's mean = exact posterior mean + shift; its scales = exact marginal sds * factor."""
        M, S = self.exact_posterior()
        self.A.copy_(M)
        self.c.copy_(-M @ self.b + mean_shift)
        self.log_s.copy_(torch.log(S.diag().sqrt() * scale_factor))

    def sample_x(self, n, seed=1):
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, self.z_dim, generator=g)
        with torch.no_grad():
            return z @ self.W.T + self.b + self.sigma * torch.randn(n, self.x_dim, generator=g)


LOG_2PI = math.log(2 * math.pi)
