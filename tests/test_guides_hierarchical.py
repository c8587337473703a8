"""Guide families (full-covariance, low-rank, IAF) and hierarchical latents."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from torch import nn
from torch.nn import functional as F

import pvae
from pvae.nn.guides import IAFNormal, make_guide
from test_bounds import fixed

LOG_2PI = math.log(2 * math.pi)


class CorrelatedLinearGaussian(nn.Module):
    """p(z) = N(0, I_2), p(x|z) = N(W z + b, 0.5^2 I_3), with a strongly correlated posterior
    (correlation -0.9); the model is fixed, only the amortized guide q(z|x) = family(x) learns."""

    x_shape = (3,)

    def __init__(self, family):
        super().__init__()
        self.register_buffer("W", torch.tensor([[1.0, 1.0], [1.0, 1.2], [0.5, 0.4]]))
        self.register_buffer("b", torch.tensor([0.3, -0.2, 0.1]))
        self.sigma = 0.5
        self.q = make_guide(family, 3, 2)
        self.multivariate = self.q.multivariate

    def model(self, x):
        n = x.shape[0]
        with pyro.plate("data", n):
            prior = pvae.nn.guides.standard_normal(x.new_zeros(n, 2), self.multivariate)
            z = pyro.sample("z", prior)
            pyro.sample("x", dist.Normal(z @ self.W.T + self.b, self.sigma).to_event(1), obs=x)

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", self.q(x))

    def exact(self):
        precision = torch.eye(2) + self.W.T @ self.W / self.sigma ** 2
        return precision, torch.linalg.inv(precision)

    def exact_log_px(self, x):
        cov = self.W @ self.W.T + self.sigma ** 2 * torch.eye(3)
        return dist.MultivariateNormal(self.b, covariance_matrix=cov).log_prob(x)

    def sample_x(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        return torch.randn(n, 2, generator=g) @ self.W.T + self.b + self.sigma * torch.randn(n, 3, generator=g)


@pytest.fixture(scope="module")
def trained():
    out = {}
    for family in ("fullcov", "diagonal"):
        torch.manual_seed(0)
        m = CorrelatedLinearGaussian(family)
        # sticking-the-landing gradients (their variance vanishes as q reaches the posterior),
        # then a tenth of the learning rate to settle
        x = m.sample_x(500, seed=1)
        for lr in (2e-2, 2e-3):
            pvae.fit(m, x, objective="stl", k=8, epochs=40, batch_size=25, lr=lr, progress=False)
        out[family] = m
    return out


def test_fullcov_guide_reaches_the_exact_posterior_and_diagonal_leaves_the_kl_gap(trained):
    x = trained["fullcov"].sample_x(200, seed=2)
    precision, cov = trained["fullcov"].exact()
    # the smallest gap a diagonal Gaussian can leave: KL(q* || p(z|x)) = 0.5 (sum log L_ii - log det L)
    diag_gap = 0.5 * float(precision.diagonal().log().sum() - torch.logdet(precision))
    assert diag_gap > 0.8  # 0.83 nats for this model
    gaps = {}
    for family, m in trained.items():
        torch.manual_seed(0)
        elbo = pvae.evaluate(m, x, k=1000, progress=False, units=False)["elbo"]
        gaps[family] = float((m.exact_log_px(x) - elbo).mean())
    assert abs(gaps["fullcov"]) < 0.03, gaps
    assert abs(gaps["diagonal"] - diag_gap) < 0.06, (gaps, diag_gap)
    # the full-covariance guide's covariance is the exact posterior covariance
    q = trained["fullcov"].q(x[:1])
    torch.testing.assert_close(q.covariance_matrix[0].detach(), cov, atol=0.03, rtol=0.05)
    assert float(q.covariance_matrix[0, 0, 1] / q.covariance_matrix[0].diagonal().prod().sqrt()) < -0.85


def test_fullcov_and_lowrank_pair_with_an_mvn_prior_for_a_closed_form_kl():
    x = torch.rand(4, 784).round()
    for family in ("fullcov", "lowrank"):
        m = pvae.VAE(latent_dim=3, hidden=(8,), guide=family, rank=1 if family == "lowrank" else None)
        g = poutine.trace(m.guide).get_trace(x)
        mt = poutine.trace(poutine.replay(m.model, trace=g)).get_trace(x)
        assert isinstance(mt.nodes["z"]["fn"], dist.MultivariateNormal)
        torch.distributions.kl_divergence(g.nodes["z"]["fn"], mt.nodes["z"]["fn"])  # registered
        pvae.fit(m, x, objective="mf-elbo", epochs=1, progress=False)
    assert m.q.linear.out_features == 3 * (2 + 1)  # lowrank rank 1: loc, diag, one factor column


def test_mf_elbo_refuses_a_guide_without_closed_form_kl():
    m = pvae.VAE(latent_dim=3, hidden=(8,), guide="iaf")
    with pytest.raises(ValueError, match="mf-elbo needs a closed-form KL.*TransformedDistribution"):
        pvae.fit(m, torch.rand(4, 784).round(), objective="mf-elbo", epochs=1, progress=False)


def test_flow_log_density_of_its_own_samples_is_the_change_of_variables_formula():
    torch.manual_seed(0)
    g = IAFNormal(features=4, latent_dim=3, flow_steps=3)
    with torch.no_grad():
        for p in g.flows.parameters():
            p.add_(0.3 * torch.randn_like(p))  # away from the identity at initialization
    h = torch.randn(1, 4)
    q = g(h)
    eps = q.base_dist.sample()

    def flow(e):
        z = e
        for t in q.transforms:
            z = t(z)
        return z

    z = flow(eps)
    jac = torch.autograd.functional.jacobian(lambda e: flow(e[None])[0], eps[0])
    expected = q.base_dist.log_prob(eps) - torch.linalg.slogdet(jac)[1]
    torch.testing.assert_close(q.log_prob(z), expected, atol=1e-4, rtol=1e-5)  # cached inverse
    torch.testing.assert_close(q.log_prob(z.detach().clone()), expected, atol=1e-4, rtol=1e-4)  # inverted


def test_guide_family_options_are_checked():
    with pytest.raises(ValueError, match="rank must be an integer >= 1"):
        make_guide("lowrank", 4, 3, rank=0)
    with pytest.raises(ValueError, match="guide 'diagonal' takes no option 'rank'"):
        make_guide("diagonal", 4, 3, rank=2)
    with pytest.raises(ValueError, match="flow_steps must be an integer >= 1"):
        make_guide("iaf", 4, 3, flow_steps=0)


def tiny_hierarchy():
    torch.manual_seed(4)
    m = pvae.HierarchicalVAE(x_shape=(4,), latent_dims=(2, 1), hidden=((3,), (2,)), activation="tanh")
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn_like(p))
    return m


def normal_lp(v, loc, scale):
    return (-0.5 * ((v - loc) / scale) ** 2 - scale.log() - 0.5 * LOG_2PI).sum(-1)


def head(linear, h):
    loc, raw = linear(h).chunk(2, -1)
    return loc, F.softplus(raw) + 1e-4


def test_hierarchical_bound_by_hand():
    m = tiny_hierarchy()
    x = torch.tensor([[1.0, 0.0, 1.0, 1.0], [0.0, 1.0, 0.0, 0.0]])
    k = 5
    z1, z2 = torch.randn(k, 2, 2), torch.randn(k, 2, 1)
    with torch.no_grad():
        iw = pvae.objective("iwae", k=k)
        bound, _ = iw.per_datapoint(m.model, fixed(m.guide, z1=z1, z2=z2), x)
        # guide, bottom-up: q(z1|x) q(z2|z1)
        lq1 = normal_lp(z1, *head(m.q_heads[0].linear, torch.tanh(m.encoders[0].net[0](x))))
        lq2 = normal_lp(z2, *head(m.q_heads[1].linear, torch.tanh(m.encoders[1].net[0](z1))))
        # model: p(z2) p(z1|z2) p(x|z1)
        lp2 = normal_lp(z2, torch.zeros(()), torch.ones(()))
        lp1 = normal_lp(z1, *head(m.priors[0][1].linear, torch.tanh(m.priors[0][0].net[0](z2))))
        dec = m.x_decoder.net
        logits = dec[2](torch.tanh(dec[0](z1)))
        lpx = (x * logits - F.softplus(logits)).sum(-1)
        lw = lpx + lp1 + lp2 - lq1 - lq2
    torch.testing.assert_close(bound, torch.logsumexp(lw, 0) - math.log(k))


def test_prior_samples_have_every_layers_shape():
    m = pvae.preset("iwae-2layer")
    tr = poutine.trace(m.model).get_trace(n=7)
    assert tr.nodes["z2"]["value"].shape == (7, 50)
    assert tr.nodes["z1"]["value"].shape == (7, 100)
    assert tr.nodes["x"]["value"].shape == (7, 784)
    assert set(tr.nodes["x"]["value"].unique().tolist()) <= {0.0, 1.0}
    assert m.sample(3).shape == (3, 784)
    one = pvae.preset("iwae-1layer")
    widths = [l.out_features for l in one.encoder.net if isinstance(l, nn.Linear)]
    assert widths == [200, 200] and one.latent_dim == 50 and one.q.linear.out_features == 100


@pytest.mark.parametrize("inference, guide", [("bottom-up", "diagonal"), ("bottom-up", "fullcov"),
                                              ("bottom-up", "iaf"), ("ladder", "diagonal")])
def test_hierarchical_vae_trains_with_every_objective(inference, guide):
    data = pvae.load_dataset("sample", "train", binarize="static", n=300)
    objectives = ["elbo", "iwae:k=4", "iwae-dreg:k=4"] + (["mf-elbo"] if inference == "ladder" else [])
    for obj in objectives:
        torch.manual_seed(0)
        m = pvae.HierarchicalVAE(latent_dims=(8, 4), hidden=((32,), (16,)), guide=guide, inference=inference)
        h = pvae.fit(m, data, objective=obj, epochs=3, lr=3e-3, batch_size=50, progress=False)
        assert h[-1]["train_loss"] < h[0]["train_loss"] - 10, (obj, [r["train_loss"] for r in h])


def test_hierarchical_config_round_trips_through_a_checkpoint(tmp_path):
    m = pvae.HierarchicalVAE(latent_dims=(4, 2), hidden=((16,), (8,)), inference="ladder", beta=[1.0, 0.5])
    pvae.fit(m, torch.rand(10, 784).round(), epochs=1, run_dir=tmp_path, progress=False)
    m2 = pvae.load(tmp_path)
    assert isinstance(m2, pvae.HierarchicalVAE) and m2.inference == "ladder" and m2.betas == [1.0, 0.5]
    for (k, v), (_, w) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(v, w), k


@pytest.mark.parametrize("kwargs, message", [
    (dict(latent_dims=(5,), hidden=((8,),)), "latent_dims must list >= 2 positive sizes"),
    (dict(latent_dims=(5, 2), hidden=((8,),)), "hidden must give one non-empty tuple"),
    (dict(beta=[1.0]), "beta must be > 0, one value or one per layer"),
    (dict(inference="top-down"), "unknown inference 'top-down'"),
    (dict(inference="ladder", guide="fullcov"), "ladder inference combines Gaussians by precision"),
])
def test_bad_hierarchical_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        pvae.HierarchicalVAE(**kwargs)


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown preset 'iwae-3layer'; choose one of"):
        pvae.preset("iwae-3layer")
