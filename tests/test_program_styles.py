"""Program styles beyond tests/programs.py (issue 27): a state-space model written with
``pyro.markov`` over time steps inside the data plate, whose log p(x) has a closed form (a
Kalman-style Gaussian), a VAE built from ``PyroModule`` nets that never calls
``pyro.module``, and a mixture prior indexed with ``Vindex`` with ``pyro.deterministic`` sites in
model and guide (exact log p(x) as a Gaussian mixture). Each trains as plain Pyro SVI does, step for step, and evaluates to the exact
value where one exists."""

import math

import pyro
import pytest
import pyro.distributions as dist
import torch
from pyro.infer import Trace_ELBO
from pyro.ops.indexing import Vindex
from pyro.nn import PyroModule
from torch import nn

import pvae

from test_user_programs import N, assert_same_as_svi, binary


class MarkovLinearGaussian(nn.Module):
    """z_0 ~ N(0, 1), z_t ~ N(a z_{t-1}, 1), x_t ~ N(z_t, sigma^2) per datapoint, written with
    pyro.markov; q(z_t | x) = N(enc(x)_t, exp(s)_t^2). x ~ N(0, L L^T + sigma^2 I), L[t, s] = a^(t-s)."""

    def __init__(self, T=4, a=0.8, sigma=0.5):
        super().__init__()
        torch.manual_seed(0)
        self.T, self.a, self.sigma = T, a, sigma
        self.enc = nn.Linear(T, 2 * T)

    def model(self, x):
        pyro.module("markov_lg", self)
        with pyro.plate("data", x.shape[0]):
            z = 0.0
            for t in pyro.markov(range(self.T)):
                z = pyro.sample(f"z_{t}", dist.Normal(self.a * z, 1.0))
                pyro.sample(f"x_{t}", dist.Normal(z, self.sigma), obs=x[..., t])

    def guide(self, x):
        pyro.module("markov_lg", self)
        loc, log_scale = self.enc(x).chunk(2, -1)
        with pyro.plate("data", x.shape[0]):
            for t in pyro.markov(range(self.T)):
                pyro.sample(f"z_{t}", dist.Normal(loc[..., t], log_scale[..., t].exp()))

    def covariance(self):
        idx = torch.arange(self.T)
        L = torch.where(idx[:, None] >= idx[None, :], self.a ** (idx[:, None] - idx[None, :]).double(),
                        torch.zeros((), dtype=torch.float64))
        return L @ L.T + self.sigma ** 2 * torch.eye(self.T, dtype=torch.float64)

    def exact_log_px(self, x):
        return dist.MultivariateNormal(torch.zeros(self.T, dtype=torch.float64),
                                       covariance_matrix=self.covariance()).log_prob(x.double())

    def sample_x(self, n, seed=1):
        g = torch.Generator().manual_seed(seed)
        chol = torch.linalg.cholesky(self.covariance())
        return (torch.randn(n, self.T, generator=g, dtype=torch.float64) @ chol.T).float()


def test_a_markov_state_space_model_trains_as_svi_and_evaluates_to_its_exact_log_likelihood():
    x = MarkovLinearGaussian().sample_x(N)
    assert_same_as_svi(MarkovLinearGaussian, x, "elbo", Trace_ELBO(), moved=["module:enc.weight"])
    pyro.clear_param_store()
    m = MarkovLinearGaussian()
    data = m.sample_x(400, seed=2)
    test = m.sample_x(20, seed=3)
    exact = m.exact_log_px(test)
    before = float((pvae.log_likelihood(m, test, k=1, progress=False).double() - exact).mean())
    h = pvae.fit(m, data, epochs=30, batch_size=50, lr=3e-2, progress=False)
    assert h.program.data_plate == "data" and h.program.vectorize  # the time loop takes the particle dim
    torch.manual_seed(0)
    ll = pvae.log_likelihood(m, test, k=2000, progress=False).double()
    assert abs(float((ll - exact).mean())) < 0.02  # IS converges to the Gaussian's exact log p(x)
    elbo = pvae.evaluate(m, test, k=50, progress=False, units=False)["summary"]["elbo"]
    assert float(exact.mean()) - elbo < abs(before)  # the guide learned: its ELBO gap shrank
    torch.manual_seed(0)
    ais = pvae.log_likelihood(m, test, method="ais", steps=100, chains=8, progress=False).double()
    assert abs(float((ais - exact).mean())) < 0.05


class PyroModuleVAE(PyroModule):
    """Nets as PyroModule[nn.Linear]: their parameters reach Pyro's param store when used, with no
    pyro.module call anywhere."""

    def __init__(self, x_dim=16, z_dim=3, hidden=8):
        super().__init__()
        torch.manual_seed(0)
        self.enc = PyroModule[nn.Sequential](PyroModule[nn.Linear](x_dim, hidden), nn.Tanh(),
                                             PyroModule[nn.Linear](hidden, 2 * z_dim))
        self.dec = PyroModule[nn.Sequential](PyroModule[nn.Linear](z_dim, hidden), nn.Tanh(),
                                             PyroModule[nn.Linear](hidden, x_dim))
        self.z_dim = z_dim

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], self.z_dim), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.dec(z)).to_event(1), obs=x)

    def guide(self, x):
        loc, log_scale = self.enc(x).chunk(2, -1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))


def test_a_pyromodule_vae_trains_as_svi_and_its_log_likelihood_bounds_its_elbo():
    x = binary(N)
    assert_same_as_svi(PyroModuleVAE, x, "elbo", Trace_ELBO())
    pyro.clear_param_store()
    m = PyroModuleVAE()
    data = binary(200, seed=1)
    start = pvae.evaluate(m, data, k=200, progress=False, units=False)["summary"]["log_px"]
    pvae.fit(m, data, epochs=20, batch_size=50, lr=1e-2, progress=False)
    r = pvae.evaluate(m, data, k=200, progress=False, units=False)["summary"]
    assert r["log_px"] > start + 1.0  # trained: log p(x) up by more than a nat per datapoint
    assert r["log_px"] >= r["elbo"]
    assert math.isfinite(r["log_px_se"])


class MixtureLinearGaussian(nn.Module):
    """A Gaussian mixture prior on z indexed with ``Vindex``, the decoded mean kept as a
    ``pyro.deterministic`` site in the model and the guide's location in the guide:
    c ~ Cat(pi), z | c ~ N(mu_c, I), x | z ~ N(W z, sigma^2 I), so
    x ~ sum_c pi_c N(W mu_c, W W^T + sigma^2 I) (exact). q(c | x) = Cat(softmax(net(x))),
    q(z | x, c) = N(A x + b_c, exp(s)^2) with b_c picked by Vindex over the particle dims."""

    def __init__(self, x_dim=3, z_dim=2, C=3, sigma=0.5):
        super().__init__()
        torch.manual_seed(0)
        self.sigma = sigma
        self.mu = torch.tensor([[-2.0, 0.0], [2.0, 0.5], [0.0, -2.5]])[:C, :z_dim]
        self.W = torch.randn(x_dim, z_dim) * 0.8
        self.pi = torch.tensor([0.5, 0.3, 0.2])[:C]
        self.logits = nn.Linear(x_dim, C)
        self.A = nn.Linear(x_dim, z_dim, bias=False)
        self.b = nn.Parameter(self.mu.clone() * 0.5)
        self.log_scale = nn.Parameter(torch.full((z_dim,), -0.5))

    def model(self, x):
        pyro.module("mixture_lg", self)
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Categorical(self.pi))
            z = pyro.sample("z", dist.Normal(Vindex(self.mu)[..., c, :], 1.0).to_event(1))
            mean = pyro.deterministic("x_mean", z @ self.W.T, event_dim=1)
            pyro.sample("x", dist.Normal(mean, self.sigma).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("mixture_lg", self)
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Categorical(logits=self.logits(x)))
            loc = pyro.deterministic("q_loc", self.A(x) + Vindex(self.b)[..., c, :], event_dim=1)
            pyro.sample("z", dist.Normal(loc, self.log_scale.exp()).to_event(1))

    def exact_log_px(self, x):
        cov = (self.W @ self.W.T + self.sigma ** 2 * torch.eye(self.W.shape[0])).double()
        comps = dist.MultivariateNormal((self.mu @ self.W.T).double(), covariance_matrix=cov)
        return torch.logsumexp(comps.log_prob(x.double()[:, None, :]) + self.pi.double().log(), -1)

    def sample_x(self, n, seed=1):
        g = torch.Generator().manual_seed(seed)
        c = torch.multinomial(self.pi, n, replacement=True, generator=g)
        z = self.mu[c] + torch.randn(n, self.mu.shape[1], generator=g)
        return z @ self.W.T + self.sigma * torch.randn(n, self.W.shape[0], generator=g)


def test_a_program_with_deterministic_sites_and_vindex_trains_as_svi_and_converges_to_its_exact_log_likelihood():
    x = MixtureLinearGaussian().sample_x(N)
    assert_same_as_svi(MixtureLinearGaussian, x, "elbo", Trace_ELBO(), moved=["module:A.weight", "module:b"])
    pyro.clear_param_store()
    m = MixtureLinearGaussian()
    data, test = m.sample_x(400, seed=2), m.sample_x(20, seed=3)
    exact = m.exact_log_px(test)
    h = pvae.fit(m, data, epochs=20, batch_size=50, lr=3e-2, progress=False)
    # the deterministic sites are neither latents nor guide-only sites; c is the discrete latent
    assert h.program.discrete == ("c",) and h.program.guide_only == () and h.program.prior_sites == ()
    torch.manual_seed(0)
    r = pvae.evaluate(m, test, k=3000, progress=False, units=False)
    ll = r["log_px"].double()
    assert abs(float((ll - exact).mean())) < 0.03  # IS over a discrete and a continuous latent
    assert r["summary"]["log_px"] >= r["summary"]["elbo"]
    with pytest.raises(ValueError, match=r"AIS moves continuous latents with HMC, and site 'c' .* is discrete"):
        pvae.log_likelihood(m, test, method="ais", progress=False)
