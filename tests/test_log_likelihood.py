"""log_likelihood on a linear-Gaussian model, whose log p(x) is known in closed form."""

import importlib

import pytest
import torch

import pvae
from linear_gaussian import PPCA


def test_exact_posterior_guide_gives_exact_log_px_for_any_k():
    # with a one-dimensional latent the diagonal guide can be the exact posterior: every
    # importance weight equals p(x), so even k = 1 is exact
    m = PPCA(x_dim=4, z_dim=1)
    m.set_guide()
    x = m.sample_x(50)
    exact = m.exact_log_px(x)
    for k in (1, 7):
        ll = pvae.log_likelihood(m, x, k=k, progress=False)
        assert ll.shape == (50,)
        torch.testing.assert_close(ll, exact, atol=1e-4, rtol=1e-5)


def test_log_likelihood_converges_to_exact_and_bound_stays_below():
    m = PPCA(x_dim=5, z_dim=2)
    m.set_guide(mean_shift=0.4, scale_factor=1.4)  # a poor guide: gap of several nats at k = 1
    x = m.sample_x(40)
    exact = m.exact_log_px(x)
    gaps = {}
    for k in (1, 10, 100, 5000):
        reps = 20 if k < 5000 else 1
        est = torch.stack([pvae.log_likelihood(m, x, k=k, progress=False) for _ in range(reps)])
        gaps[k] = float((exact - est.mean(0)).mean())
    # E[L_k] increases with k and stays below log p(x) ...
    assert gaps[1] > gaps[10] > gaps[100] > 0, gaps
    assert gaps[1] > 0.3
    # ... and reaches it: within 0.02 nats per datapoint at k = 5000
    assert abs(gaps[5000]) < 0.02, gaps


def test_chunking_over_particles_and_batches_does_not_change_the_estimate(monkeypatch):
    ev = importlib.import_module("pvae.infer.importance")

    m = PPCA(x_dim=5, z_dim=2)
    m.set_guide(mean_shift=0.2)
    x = m.sample_x(30)
    torch.manual_seed(0)
    a = pvae.log_likelihood(m, x, k=2000, batch_size=30, progress=False)
    monkeypatch.setattr(ev, "PARTICLES_PER_PASS", 70 * 8)  # 8 datapoints x 70 particles a pass
    b = pvae.log_likelihood(m, x, k=2000, batch_size=8, progress=False)
    exact = m.exact_log_px(x)
    for est in (a, b):  # same estimator: small bias, per-datapoint error of a few hundredths
        assert abs(float((est - exact).mean())) < 0.03
        assert float((est - exact).abs().mean()) < 0.08


def test_evaluate_reports_consistent_terms():
    m = PPCA(x_dim=5, z_dim=2)
    m.set_guide(mean_shift=0.3, scale_factor=1.2)
    x = m.sample_x(30)
    r = pvae.evaluate(m, x, k=500, progress=False)
    s = r["summary"]
    torch.testing.assert_close(r["elbo"], r["recon"] - r["kl"])
    assert s["log_px"] > s["elbo"]  # the k-sample estimate is tighter than the ELBO
    assert abs(s["log_px"] - float(m.exact_log_px(x).mean())) < 0.05
    assert r["khat"].shape == (30,) and r["ess"].shape == (30,)
    assert 1.0 <= s["ess"] <= 500.0
    assert s["active_units"] == 2


def test_ess_and_khat_on_known_weights():
    k = 1000
    equal = torch.zeros(k, 3)
    torch.testing.assert_close(pvae.ess(equal), torch.full((3,), float(k)))
    one_heavy = torch.full((k, 1), -50.0)
    one_heavy[0] = 0.0
    assert float(pvae.ess(one_heavy)) == pytest.approx(1.0, rel=1e-6)
    g = torch.Generator().manual_seed(0)
    light = 0.1 * torch.randn(k, 4, generator=g)  # near-constant weights: k-hat small
    heavy = torch.distributions.Cauchy(0.0, 1.0).sample((k, 4)).abs() * 5  # heavy-tailed: k-hat large
    assert (pvae.psis_khat(light) < 0.5).all()
    assert (pvae.psis_khat(heavy) > 0.7).all()


def test_active_units_counts_dims_whose_posterior_mean_varies():
    m = PPCA(x_dim=5, z_dim=3)
    with torch.no_grad():
        m.A.zero_()
        m.A[0, 0] = 1.0  # z_0's mean follows x_0: variance ~ Var(x_0) >> 0.01
        m.A[1, 1] = 0.01  # z_1's mean barely moves: variance ~ 1e-4 * Var(x_1) < 0.01
    x = m.sample_x(500)
    au = pvae.active_units(m, x)
    assert au["active"] == 1
    assert au["variances"]["z"].shape == (3,)
    assert float(au["variances"]["z"][2]) == 0.0


def test_k_must_be_positive():
    m = PPCA()
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        pvae.log_likelihood(m, m.sample_x(3), k=0)


def test_active_units_of_a_guide_without_closed_form_mean_ignore_monte_carlo_noise():
    import pyro
    import pyro.distributions as dist
    from pyro.distributions.transforms import AffineTransform

    class FlowGuided(PPCA):
        def guide(self, x):
            with pyro.plate("data", x.shape[0]):
                base = dist.Normal(x @ self.A.T + self.c, 1.0).to_event(1)  # unit scale: as noisy as the prior
                pyro.sample("z", dist.TransformedDistribution(base, [AffineTransform(0.0, 1.0, event_dim=1)]))

    m = FlowGuided(x_dim=5, z_dim=3)
    with torch.no_grad():
        m.A.zero_()
        m.A[0, 0] = 1.0
    x = m.sample_x(400)
    # 50 draws a datapoint: the mean's Monte Carlo variance (1/50 = 0.02) alone exceeds 0.01
    au = pvae.active_units(m, x, num_samples=50)
    assert au["active"] == 1, au["variances"]


def test_an_unreliable_estimate_is_said_where_it_is_shown():
    """Most k-hats above 0.7 (a guide far narrower than the posterior): evaluate's summary carries a
    note naming the share and the fixes, and a warning says it; a good guide gets neither."""
    import warnings

    m = PPCA(x_dim=5, z_dim=2)
    x = m.sample_x(40)
    m.set_guide(mean_shift=1.5, scale_factor=0.3)
    with pytest.warns(UserWarning, match=r"PSIS k-hat exceeds 0.7 for \d+% of the datapoints.*raise k.*AIS"):
        bad = pvae.evaluate(m, x, k=200, progress=False, units=False)["summary"]
    assert bad["khat_gt_0_7"] > 0.5 and any("k-hat exceeds 0.7" in n for n in bad["notes"])
    m.set_guide()  # the exact posterior: every weight equal
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        good = pvae.evaluate(m, x, k=200, progress=False, units=False)["summary"]
    assert good["khat_gt_0_7"] < 0.5 and not any("k-hat" in n for n in good.get("notes", []))
