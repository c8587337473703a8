"""Log-weights, ELBO and the k-sample bound of a tiny fixed-weight VAE, against the same
quantities written out by hand with plain torch."""

import math

import pytest
import pyro
import torch
from pyro import poutine
from torch.nn import functional as F

import pvae
from pyro.poutine.messenger import Messenger

LOG_2PI = math.log(2 * math.pi)


class FixDraws(Messenger):
    """Make latent sites take given values (still unobserved, so scored as draws of q)."""

    def __init__(self, values):
        super().__init__()
        self.values = values

    def _pyro_sample(self, msg):
        if msg["name"] in self.values:
            msg["value"], msg["done"] = self.values[msg["name"]], True


def fixed(guide, **values):
    return FixDraws(values)(guide)


def tiny_vae(beta=1.0):
    torch.manual_seed(3)
    m = pvae.VAE(x_shape=(3,), latent_dim=2, hidden=(4,), activation="tanh", likelihood="bernoulli", beta=beta)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn_like(p))
    return m


def hand_log_weights(m, x, z):
    """log p(x|z), log p(z), log q(z|x) for z of shape (k, B, D), written out."""
    enc, dec = m.encoder.net, m.decoder.net
    h = torch.tanh(x @ enc[0].weight.T + enc[0].bias)
    out = h @ m.q.linear.weight.T + m.q.linear.bias
    loc, scale = out[:, :2], F.softplus(out[:, 2:]) + 1e-4
    log_q = (-0.5 * ((z - loc) / scale) ** 2 - scale.log() - 0.5 * LOG_2PI).sum(-1)
    log_pz = (-0.5 * z ** 2 - 0.5 * LOG_2PI).sum(-1)
    logits = torch.tanh(z @ dec[0].weight.T + dec[0].bias) @ dec[2].weight.T + dec[2].bias
    log_px_z = (x * logits - F.softplus(logits)).sum(-1)
    return log_px_z, log_pz, log_q


@pytest.fixture
def x():
    return torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])


def test_log_weights_match_hand_computation(x):
    m = tiny_vae()
    k = 4
    z = torch.randn(k, 2, 2)
    guide = fixed(m.guide, z=z)
    with torch.no_grad():
        t = pvae.log_weight_terms(m.model, guide, x, num_particles=k)
        px, pz, q = hand_log_weights(m, x, z)
    assert t.log_weights.shape == (k, 2)
    torch.testing.assert_close(t.log_px_z, px)
    torch.testing.assert_close(t.log_pz, pz)
    torch.testing.assert_close(t.log_qz, q)
    lw = px + pz - q
    # the k-sample bound: logsumexp over particles, per datapoint, minus log k
    iwae = pvae.objective("iwae", k=k)
    bound, s = iwae.per_datapoint(m.model, guide, x)
    torch.testing.assert_close(bound, torch.logsumexp(lw, 0) - math.log(k))
    assert s == 1.0
    torch.testing.assert_close(iwae.differentiable_loss(m.model, guide, x), -(torch.logsumexp(lw, 0) - math.log(k)).sum())
    # the ELBO estimate is the mean log-weight; evaluate() reports it with its two terms
    torch.testing.assert_close(t.log_weights.mean(0), lw.mean(0))


def test_iwae_k1_equals_trace_elbo_on_same_draws(x):
    m = tiny_vae()
    pyro.set_rng_seed(7)
    elbo = pvae.objective("elbo").loss(m.model, m.guide, x)
    pyro.set_rng_seed(7)
    iw = pvae.objective("iwae", k=1).loss(m.model, m.guide, x)
    assert iw == pytest.approx(elbo, rel=1e-6)


def test_beta_scales_latent_terms_in_model_and_guide(x):
    m = tiny_vae(beta=0.3)
    pyro.set_rng_seed(11)
    loss = pvae.objective("elbo").loss(m.model, m.guide, x)
    pyro.set_rng_seed(11)
    z = poutine.trace(m.guide).get_trace(x).nodes["z"]["value"]
    with torch.no_grad():
        px, pz, q = hand_log_weights(m, x, z[None])
    assert loss == pytest.approx(-(px + 0.3 * (pz - q)).sum().item(), rel=1e-5)
    # the same beta inside pvae's importance-weighted bound, on the latent terms only
    zk = torch.randn(3, 2, 2)
    guide = fixed(m.guide, z=zk)
    with torch.no_grad():
        bound, _ = pvae.objective("iwae", k=3).per_datapoint(m.model, guide, x)
        px, pz, q = hand_log_weights(m, x, zk)
    torch.testing.assert_close(bound, torch.logsumexp(px + 0.3 * (pz - q), 0) - math.log(3))


def test_scale_on_whole_model_goes_outside_the_logsumexp(x):
    """A poutine.scale on every site (as subsampling puts there) multiplies the bound, it does not
    enter the log-weights as RenyiELBO's does."""
    m = tiny_vae()
    zk = torch.randn(5, 2, 2)
    guide = fixed(m.guide, z=zk)
    iwae = pvae.objective("iwae", k=5)
    with torch.no_grad():
        plain = iwae.differentiable_loss(m.model, guide, x)
        scaled = iwae.differentiable_loss(poutine.scale(m.model, 7.0), poutine.scale(guide, 7.0), x)
    torch.testing.assert_close(scaled, 7.0 * plain)


def test_mean_field_elbo_uses_the_closed_form_kl(x):
    m = tiny_vae()
    pyro.set_rng_seed(5)
    mf = pvae.objective("mf-elbo").loss(m.model, m.guide, x)
    pyro.set_rng_seed(5)
    z = poutine.trace(m.guide).get_trace(x).nodes["z"]["value"]
    with torch.no_grad():
        px, _, _ = hand_log_weights(m, x, z[None])
        q = m.posterior(x)
        kl = torch.distributions.kl_divergence(q.base_dist, torch.distributions.Normal(0.0, 1.0)).sum()
    assert mf == pytest.approx(-(px.sum() - kl).item(), rel=1e-5)


def test_site_outside_the_data_plate_is_an_error(x):
    def model(x):
        w = pyro.sample("w", pyro.distributions.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", pyro.distributions.Normal(w, 1.0), obs=x[:, 0])

    def guide(x):
        pyro.sample("w", pyro.distributions.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="sample site 'w' is outside the data plate"):
        pvae.log_weight_terms(model, guide, x, num_particles=2)
    with pytest.raises(ValueError, match="outside the data plate"):
        pvae.objective("iwae", k=3).loss(model, guide, x)


def test_objective_names_and_parameters_are_checked():
    with pytest.raises(ValueError, match="unknown objective 'iwea'.*'elbo'"):
        pvae.objective("iwea")
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        pvae.objective("iwae", k=0)
    with pytest.raises(ValueError, match="alpha = 1"):
        pvae.objective("renyi", k=5, alpha=1.0)


def test_renyi_alpha_interpolates_between_elbo_and_iwae(x):
    m = tiny_vae()
    zk = torch.randn(6, 2, 2)
    guide = fixed(m.guide, z=zk)
    with torch.no_grad():
        px, pz, q = hand_log_weights(m, x, zk)
        lw = px + pz - q
        for a in (0.5, -1.0, 2.0):
            b, _ = pvae.objective("renyi", k=6, alpha=a).per_datapoint(m.model, guide, x)
            torch.testing.assert_close(b, (torch.logsumexp((1 - a) * lw, 0) - math.log(6)) / (1 - a))
