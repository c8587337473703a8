"""The objective registry: each bound against Pyro or a hand computation, and the gradient
estimators (DReG, STL, PIWAE) against the gradients they must reproduce."""

import math

import pyro
import pytest
import torch
from pyro import poutine

import pvae
from linear_gaussian import PPCA
from test_bounds import fixed, hand_log_weights, tiny_vae


def fixed_draws(m, x, k):
    """A guide whose k draws per datapoint are fixed, and their log-weights written out by hand."""
    zk = torch.randn(k, x.shape[0], 2)
    with torch.no_grad():
        px, pz, q = hand_log_weights(m, x, zk)
    return fixed(m.guide, z=zk), px + pz - q


@pytest.fixture
def x():
    return torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0], [1.0, 1.0, 1.0]])


@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_iwae_and_renyi_equal_pyros_renyi_elbo_on_the_same_draws(x, alpha):
    m = tiny_vae()
    name = "iwae" if alpha == 0 else "renyi"
    pyro.set_rng_seed(1)
    ours = pvae.objective(name, k=6, alpha=alpha, max_plate_nesting=1).loss(m.model, m.guide, x)
    pyro.set_rng_seed(1)
    theirs = pyro.infer.RenyiELBO(alpha=alpha, num_particles=6, vectorize_particles=True,
                                  max_plate_nesting=1).loss(m.model, m.guide, x)
    assert ours == pytest.approx(theirs, rel=1e-5)


def test_pyro_renyi_differentiable_loss_matches_its_loss(x):
    m = tiny_vae()
    obj = pvae.objective("pyro-renyi", k=5, alpha=0.5, max_plate_nesting=1)
    pyro.set_rng_seed(2)
    loss = obj.loss(m.model, m.guide, x)
    pyro.set_rng_seed(2)
    dl = obj.differentiable_loss(m.model, m.guide, x)
    assert dl.requires_grad and dl.item() == pytest.approx(loss, rel=1e-5)


def test_pyro_renyi_puts_beta_inside_the_logsumexp_and_pvae_does_not(x):
    """beta = 0.3 on z: pvae weights the latent terms of each log-weight; with beta on the whole
    model (all sites) pvae multiplies the bound while Pyro's bound changes shape."""
    m = tiny_vae()
    g, lw = fixed_draws(m, x, 4)
    with torch.no_grad():
        ours = pvae.objective("iwae", k=4).differentiable_loss(poutine.scale(m.model, 0.3), poutine.scale(g, 0.3), x)
    torch.testing.assert_close(ours, -0.3 * (torch.logsumexp(lw, 0) - math.log(4)).sum())
    pyro_value = -(torch.logsumexp(0.3 * lw, 0) - math.log(4)).sum()  # what RenyiELBO computes
    assert abs(float(ours - pyro_value)) > 1e-3


def test_miwae_and_ciwae_bounds_by_hand(x):
    m = tiny_vae()
    g, lw = fixed_draws(m, x, 6)
    with torch.no_grad():
        mi, _ = pvae.objective("miwae", k=6, M=2).per_datapoint(m.model, g, x)
        groups = lw.reshape(2, 3, 3)
        torch.testing.assert_close(mi, (torch.logsumexp(groups, 1) - math.log(3)).mean(0))
        ci, _ = pvae.objective("ciwae", k=6, beta=0.25).per_datapoint(m.model, g, x)
        torch.testing.assert_close(ci, 0.25 * lw.mean(0) + 0.75 * (torch.logsumexp(lw, 0) - math.log(6)))
        # the ends of each family
        m1, _ = pvae.objective("miwae", k=6, M=1).per_datapoint(m.model, g, x)
        i6, _ = pvae.objective("iwae", k=6).per_datapoint(m.model, g, x)
        torch.testing.assert_close(m1, i6)
        c1, _ = pvae.objective("ciwae", k=6, beta=1.0).per_datapoint(m.model, g, x)
        torch.testing.assert_close(c1, lw.mean(0))


def test_estimators_keep_the_value_of_their_bound(x):
    m = tiny_vae()
    g, lw = fixed_draws(m, x, 6)
    iwae = -(torch.logsumexp(lw, 0) - math.log(6)).sum()
    torch.testing.assert_close(pvae.objective("iwae-dreg", k=6).differentiable_loss(m.model, g, x).detach(), iwae)
    torch.testing.assert_close(pvae.objective("piwae", k=6, M=2).differentiable_loss(m.model, g, x).detach(), iwae)
    torch.testing.assert_close(pvae.objective("stl", k=6).differentiable_loss(m.model, g, x).detach(), -lw.mean(0).sum())


def _grads(model, obj, x, n, seed=0):
    pyro.set_rng_seed(seed)
    out = []
    for _ in range(n):
        model.zero_grad()
        obj.differentiable_loss(model.model, model.guide, x).backward()
        out.append(torch.cat([p.grad.flatten().clone() for p in (model.A, model.c, model.log_s, model.W, model.b)]))
    return torch.stack(out)


N_PHI = 2 * 5 + 2 + 2  # A, c, log_s of the PPCA guide


def test_dreg_gradient_is_unbiased_for_iwae_with_lower_guide_variance():
    m = PPCA(x_dim=5, z_dim=2)
    m.set_guide(mean_shift=0.3, scale_factor=1.3)
    x = m.sample_x(1)
    ratios = {}
    for k in (10, 100):
        gi = _grads(m, pvae.objective("iwae", k=k), x, 1000)
        gd = _grads(m, pvae.objective("iwae-dreg", k=k), x, 1000)
        # the model's gradient is IWAE's exactly (same draws) ...
        torch.testing.assert_close(gd[:, N_PHI:], gi[:, N_PHI:], rtol=1e-4, atol=1e-5)
        # ... the guide's agrees in expectation: every component within 4.5 standard errors
        se = (gi.var(0) / len(gi) + gd.var(0) / len(gd)).sqrt()[:N_PHI]
        z = (gi.mean(0) - gd.mean(0))[:N_PHI] / se
        assert z.abs().max() < 4.5, z
        ratios[k] = float(gd[:, :N_PHI].var(0).sum() / gi[:, :N_PHI].var(0).sum())
    # lower variance for the guide, and the more so as k grows (measured: ~0.06 at k=10, ~0.001 at k=100)
    assert ratios[10] < 0.5 and ratios[100] < ratios[10] / 5, ratios


def test_stl_guide_gradient_vanishes_at_the_exact_posterior():
    m = PPCA(x_dim=4, z_dim=1)  # a 1-D latent: the diagonal guide can be exact
    m.set_guide()
    x = m.sample_x(8)
    g_stl = _grads(m, pvae.objective("stl", k=3), x, 20)
    g_elbo = _grads(m, pvae.objective("elbo", k=3, max_plate_nesting=1), x, 20)
    n_phi = 4 + 1 + 1
    assert g_stl[:, :n_phi].abs().max() < 1e-4  # zero variance, zero mean
    assert g_elbo[:, :n_phi].std(0).max() > 1e-2  # the score term's noise
    # the model's gradient is the ELBO's on the same draws
    torch.testing.assert_close(g_stl[:, n_phi:], g_elbo[:, n_phi:], rtol=1e-4, atol=1e-4)


def test_piwae_gives_the_model_iwae_and_the_guide_miwae_gradients():
    m = PPCA(x_dim=5, z_dim=2)
    m.set_guide(mean_shift=0.3, scale_factor=1.3)
    x = m.sample_x(3)
    gp = _grads(m, pvae.objective("piwae", k=8, M=2), x, 5)
    gi = _grads(m, pvae.objective("iwae", k=8), x, 5)
    gm = _grads(m, pvae.objective("miwae", k=8, M=2), x, 5)
    torch.testing.assert_close(gp[:, N_PHI:], gi[:, N_PHI:], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gp[:, :N_PHI], gm[:, :N_PHI], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["iwae-dreg", "stl", "piwae", "miwae", "ciwae", "renyi", "pyro-renyi"])
def test_every_objective_trains_a_vae(name):
    torch.manual_seed(0)
    data = pvae.load_dataset("sample", "train", binarize="static", n=600)
    m = pvae.VAE(x_shape=(784,), latent_dim=4, hidden=(32,))
    h = pvae.fit(m, data, objective=name, k=4, epochs=3, lr=3e-3, progress=False)
    assert h[-1]["train_loss"] < h[0]["train_loss"] - 20, [r["train_loss"] for r in h]


@pytest.mark.parametrize("kwargs, message", [
    (dict(name="miwae", k=6, M=4), "k must be a multiple of M"),
    (dict(name="ciwae", k=4, beta=1.5), r"beta must lie in \[0, 1\]"),
    (dict(name="pyro-renyi", k=4, alpha=1.0), "alpha = 1"),
])
def test_bad_objective_parameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        pvae.objective(**kwargs)


def test_estimators_need_a_module_guide(x):
    m = tiny_vae()
    with pytest.raises(ValueError, match="need the guide to be a method of an nn.Module"):
        pvae.objective("iwae-dreg", k=2).loss(m.model, lambda x: m.guide(x), x)
