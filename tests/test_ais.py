"""Annealed importance sampling, BDMC and error bars against closed forms: a linear-Gaussian
model (probabilistic PCA) has an exact log p(x) and an exact posterior."""

import math
import sys
from pathlib import Path

import pytest
import torch

import pvae
from pvae.infer.ais import Target, hmc, schedule
from pvae.infer.bdmc import bdmc
from pvae.infer.importance import mc_standard_error
from pvae.infer.program import analyse

from linear_gaussian import PPCA
from programs import LinearGaussian

sys.path.insert(0, str(Path(__file__).parent.parent / "examples"))
from ais_exact_2d import quadrature_log_px  # noqa: E402 (the example's quadrature, 2-D latent VAEs)


@pytest.fixture
def ppca():
    torch.manual_seed(0)
    m = PPCA(x_dim=5, z_dim=2, sigma=0.5)
    return m, m.sample_x(20)


@pytest.fixture
def lg():
    """A linear-Gaussian model whose guide is the exact posterior widened by exp(log_sigma_q)."""
    m = LinearGaussian(x_dim=5, z_dim=2, sigma=0.5)
    return m, m.sample_v(20)


def test_schedule_runs_from_zero_to_one_and_rises():
    for kind in ("sigmoid", "linear"):
        b = schedule(50, kind)
        assert b[0] == 0 and b[-1] == 1 and bool((b[1:] > b[:-1]).all())
    with pytest.raises(ValueError, match="steps >= 1"):
        schedule(0)


def test_ais_from_the_exact_posterior_is_exact_at_any_number_of_steps(lg):
    m, x = lg  # q(z|x) = p(z|x): every log-weight increment is (beta_t - beta_t-1) log p(x)
    for steps in (1, 3, 20):
        ll = pvae.log_likelihood(m, x, method="ais", steps=steps, chains=2, leapfrog=3, progress=False)
        torch.testing.assert_close(ll, m.exact_log_p(x), atol=1e-4, rtol=0)


def test_ais_converges_to_the_exact_log_likelihood_from_a_poor_guide(lg):
    m, x = lg
    with torch.no_grad():
        m.log_sigma_q.fill_(math.log(2.5))  # a guide 2.5 times too wide
    exact = m.exact_log_p(x)
    torch.manual_seed(1)
    is_ = pvae.log_likelihood(m, x, k=16, progress=False)
    torch.manual_seed(1)
    ll = pvae.log_likelihood(m, x, method="ais", steps=200, chains=16, leapfrog=10, progress=False)
    assert abs(float((ll - exact).mean())) < 0.05  # stated: 200 steps, 16 chains, 10 leapfrog steps
    assert float((ll - exact).abs().mean()) < 0.1
    assert float((is_ - exact).mean()) < -0.1  # IS with as many samples as chains falls short from this guide
    assert abs(float((ll - exact).mean())) < abs(float((is_ - exact).mean())) / 2


def test_bdmc_brackets_the_exact_value_and_its_gap_falls_with_steps(ppca):
    m, x = ppca
    m.set_guide(mean_shift=0.5, scale_factor=2.0)
    gaps = []
    for steps in (2, 30):
        r = bdmc(m, n=20, steps=steps, chains=8, data=x, seed=0, progress=False)
        exact = float(m.exact_log_px(r["x"]).mean())
        assert r.lower.mean() <= exact + 0.05 and r.upper.mean() >= exact - 0.05
        gaps.append(r["summary"]["gap"])
    assert gaps[1] < gaps[0] / 3 and gaps[1] < 0.3


def test_hmc_leaves_a_gaussian_target_invariant(lg):
    m, x = lg  # the guide is the exact posterior: start the chains there, in stationarity
    x = x[:2]
    program = analyse(m.model, m.guide, (x,), {})
    target = Target(m, program, (x,), {}, chains=4000)
    torch.manual_seed(0)
    u = target.draw("guide")

    def log_post(v):
        _, _, joint, ldj = target.parts(v)
        return joint + ldj

    step = torch.full((4000, 2), 0.3)
    for _ in range(15):
        u, _, _ = hmc(u, log_post, step, 5, target)
    z = u["z"][:, :, 0]  # (chains, datapoints, 2)
    with torch.no_grad():
        mean, S = m.posterior(x, torch.ones_like(x, dtype=torch.bool), torch.tensor(m.sigma))
    for b in range(2):
        sd = float(S[b].diag().max().sqrt())
        torch.testing.assert_close(z[:, b].mean(0), mean[b], atol=5 * sd / math.sqrt(4000), rtol=0)
        torch.testing.assert_close(torch.cov(z[:, b].T), S[b], atol=0.1 * sd ** 2, rtol=0.1)


def test_ais_refuses_bad_step_sizes_and_mass_matrices_in_one_line(lg):
    from pvae.infer.ais import ais_log_likelihood

    m, x = lg
    for kw, msg in [(dict(step_size=-1.0), "step_size must be > 0"), (dict(step_size=float("nan")), "finite"),
                    (dict(mass="full"), "mass must be 'guide' or 'identity'")]:
        with pytest.raises(ValueError, match=msg):
            ais_log_likelihood(m, x[:2], steps=2, chains=2, progress=False, **kw)
    with pytest.raises(ValueError, match="step_size must be > 0"):
        bdmc(m, n=2, steps=2, chains=2, step_size=0.0, data=x[:2], progress=False)


def test_ais_is_refused_for_discrete_latents_and_names_its_options():
    import pyro
    import pyro.distributions as dist

    def model(x):
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Bernoulli(0.5 * torch.ones(x.shape[0])))
            pyro.sample("x", dist.Normal(c, 1.0), obs=x[:, 0])

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("c", dist.Bernoulli(0.5 * torch.ones(x.shape[0])))

    x = torch.randn(5, 1)
    with pytest.raises(ValueError, match="site 'c' .* is discrete: use method='is'"):
        pvae.log_likelihood(model, x, guide=guide, method="ais", steps=2, progress=False)
    with pytest.raises(ValueError, match="method must be 'is'"):
        pvae.log_likelihood(model, x, guide=guide, method="mcmc", progress=False)


def test_mc_standard_error_matches_the_spread_of_repeated_estimates(ppca):
    m, x = ppca
    m.set_guide(mean_shift=0.3, scale_factor=1.5)
    reps = torch.stack([pvae.log_likelihood(m, x[:5], k=50, progress=False) for _ in range(200)])
    from pvae.infer.program import log_weight_terms

    with torch.no_grad():
        lw = log_weight_terms(m.model, m.guide, x[:5], num_particles=50).log_weights
    se = mc_standard_error(lw)
    torch.testing.assert_close(se, reps.std(0), rtol=0.5, atol=0.01)


def test_ais_standard_error_over_chains_matches_the_spread_of_repeated_runs(lg):
    m, x = lg
    with torch.no_grad():
        m.log_sigma_q.fill_(math.log(2.5))  # a poor guide and a short schedule: AIS varies from run to run
    x = x[:4]
    torch.manual_seed(0)
    kw = dict(method="ais", steps=6, chains=16, leapfrog=2, progress=False)
    runs = [pvae.log_likelihood(m, x, with_se=True, **kw) for _ in range(60)]
    ll, se = torch.stack([r[0] for r in runs]), torch.stack([r[1] for r in runs])
    assert ll.shape == se.shape == (60, 4) and bool((se > 0).all())
    torch.testing.assert_close(se.mean(0), ll.std(0), rtol=0.3, atol=0.01)  # measured within 0.25 of each other
    one = pvae.log_likelihood(m, x, with_se=True, **dict(kw, chains=1))[1]
    assert bool(one.isnan().all())  # one chain says nothing of the spread
    ll_is, se_is = pvae.log_likelihood(m, x, k=50, with_se=True, progress=False)
    assert se_is.shape == (4,) and bool((se_is > 0).all())


def test_evaluate_reports_error_bars_and_reliability_flags(ppca):
    m, x = ppca
    m.set_guide(mean_shift=0.3)
    r = pvae.evaluate(m, x, k=100, progress=False, units=False)
    s = r["summary"]
    assert s["log_px_se"] == pytest.approx(float(r["log_px"].std() / math.sqrt(20)), rel=1e-5)
    assert 0 < s["log_px_mc_se"] < s["log_px_se"]
    assert r["unreliable"].dtype == torch.bool and s["khat_gt_0_7"] == pytest.approx(float(r["unreliable"].float().mean()))


def test_ais_beats_is_at_comparable_cost_on_a_small_trained_vae():
    train = pvae.load_dataset("sample", "train", binarize="static", n=1000)
    test = pvae.load_dataset("sample", "test", binarize="static", n=10)
    torch.manual_seed(0)
    m = pvae.VAE(x_shape=(784,), latent_dim=8, hidden=(64,), activation="tanh")
    pvae.fit(m, train, epochs=3, batch_size=100, lr=3e-3, progress=False)
    torch.manual_seed(0)
    steps, chains, leapfrog = 30, 4, 4
    ais_ll = pvae.log_likelihood(m, test, method="ais", steps=steps, chains=chains, leapfrog=leapfrog, progress=False)
    is_ll = pvae.log_likelihood(m, test, k=chains * steps * (leapfrog + 1), progress=False)  # more than AIS makes
    assert float(ais_ll.mean()) >= float(is_ll.mean()) - 0.1
    r = bdmc(m, n=5, steps=100, chains=4, leapfrog=4, progress=False)
    assert 0 <= r["summary"]["gap"] < 3.0  # stated bound at 100 steps, 4 chains, 4 leapfrog steps


@pytest.mark.slow
def test_ais_at_its_defaults_reaches_the_exact_log_likelihood_of_a_2d_latent_vae():
    train = pvae.load_dataset("sample", "train", binarize="static", n=2000)
    test = pvae.load_dataset("sample", "test", binarize="static", n=8)
    torch.manual_seed(0)
    m = pvae.VAE(x_shape=(784,), latent_dim=2, hidden=(64,), activation="tanh")
    pvae.fit(m, train, epochs=5, batch_size=100, lr=3e-3, progress=False)
    m.eval()
    exact = quadrature_log_px(m, test.x.reshape(8, 784), points=301, fine=301)
    torch.manual_seed(1)
    is_err = pvae.log_likelihood(m, test, k=5000, progress=False).double() - exact
    torch.manual_seed(1)
    ll, se = pvae.log_likelihood(m, test, method="ais", with_se=True, progress=False)  # the defaults
    err = ll.double() - exact
    print(f"IS k=5000 error {float(is_err.mean()):.3f}, AIS error {float(err.mean()):.3f}, |AIS error| "
          f"{float(err.abs().mean()):.3f}, max {float(err.abs().max()):.3f}, mean s.e. {float(se.mean()):.3f}")
    assert float(err.abs().mean()) < 0.05  # the defaults' stated accuracy on small models
    assert float(err.abs().max()) < 0.15
    assert float(err.abs().mean()) < float(is_err.abs().mean())  # and better than IS with k=5000 here


def test_ais_folds_chains_into_the_batch_for_nets_without_a_particle_dim(lg):
    import warnings

    import programs as P

    m, x = lg
    program = analyse(m.model, m.guide, (x,), {})
    program.vectorize = False  # as for BatchNorm nets: chains go into the batch, one plain trace
    m._pvae_program = program
    ll = pvae.log_likelihood(m, x, method="ais", steps=4, chains=3, leapfrog=3, progress=False)
    torch.testing.assert_close(ll, m.exact_log_p(x), atol=1e-4, rtol=0)  # exact posterior start: exact
    with torch.no_grad():
        m.log_sigma_q.fill_(math.log(2.5))
    ll = pvae.log_likelihood(m, x, method="ais", steps=100, chains=8, progress=False)
    assert abs(float((ll - m.exact_log_p(x)).mean())) < 0.1
    bn = P.init_(P.BatchNormVAE(x_dim=16, hidden=8))
    xb = (torch.rand(40, 16, generator=torch.Generator().manual_seed(0)) < 0.3).float()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pvae.fit(bn, xb, epochs=2, batch_size=8, progress=False)
        a = pvae.log_likelihood(bn, xb[:10], method="ais", steps=30, chains=4, progress=False)
        i = pvae.log_likelihood(bn, xb[:10], k=500, progress=False)
    assert abs(float(a.mean() - i.mean())) < 0.5  # both close to log p(x) for this small latent


# -- the traced target (pvae.infer.ais_graph) ---------------------------------------------------------------
def _small_vae():
    torch.manual_seed(0)
    m = pvae.VAE(x_shape=(12,), latent_dim=3, hidden=(8,))
    x = (torch.rand(6, 12) < 0.4).float()
    return m, x


def test_one_evaluation_gives_the_tempered_target_and_its_gradient_at_every_beta():
    from pvae.infer.ais_graph import TargetGraph, eager_terms, tempered

    m, x = _small_vae()
    program = analyse(m.model, m.guide, (x,), {})
    target = Target(m, program, (x,), {}, chains=3)
    u = target.draw("guide")
    for start in ("guide", "prior"):
        graph = TargetGraph(target, start, say=pytest.fail)
        terms = graph(u)
        assert graph.traced
        for a, b in zip(terms, eager_terms(target, start, u)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        for beta in (0.0, 0.3, 1.0):  # by hand: log f_beta = f0 + beta (log p(x, z) - f0) + log |dz/du|
            v = {"z": u["z"].clone().requires_grad_(True)}
            q, pz, joint, ldj = target.parts(v)
            f0 = q if start == "guide" else pz
            want = f0 + beta * (joint - f0) + ldj
            (grad,) = torch.autograd.grad(want.sum(), [v["z"]])
            lp, g = tempered(terms, start, beta, ["z"])
            torch.testing.assert_close(lp, want.detach(), rtol=1e-5, atol=1e-4)
            torch.testing.assert_close(g["z"], grad, rtol=1e-5, atol=1e-4)


def test_ais_through_the_traced_graph_equals_the_eager_one_on_the_same_draws(monkeypatch):
    import pvae.infer.matmul as matmul
    from pvae.infer.ais import ais

    timing = matmul.use_fastest_matmuls

    def timed_afresh(graph):  # a machine without the product choices on disk times them on random inputs
        torch.randn(1000)
        return timing(graph)

    monkeypatch.setattr(matmul, "use_fastest_matmuls", timed_afresh)
    monkeypatch.setattr("pvae.infer.ais_graph.STEERING_BF16", False)  # float32 gradients: the same trajectories
    m, x = _small_vae()
    program = analyse(m.model, m.guide, (x,), {})
    out = []
    for compiled in (True, False):
        target = Target(m, program, (x,), {}, chains=4)
        torch.manual_seed(5)
        out.append(ais(target, schedule(30), leapfrog=2, compiled=compiled))
    torch.testing.assert_close(out[0], out[1], rtol=1e-4, atol=1e-3)


class DrawsInside(torch.nn.Module):
    """A model that adds fresh noise to its decoder's input (a random op inside the target)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.dec, self.enc = torch.nn.Linear(2, 6), torch.nn.Linear(6, 4)

    def model(self, x):
        import pyro
        import pyro.distributions as dist

        pyro.module("draws_inside", self)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 2), 1.0).to_event(1))
            logits = self.dec(z + 1e-3 * torch.randn_like(z))
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)

    def guide(self, x):
        import pyro
        import pyro.distributions as dist

        pyro.module("draws_inside", self)
        loc, s = self.enc(x).chunk(2, -1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, s.exp()).to_event(1))


def test_a_target_that_draws_random_numbers_stays_eager_and_says_so():
    from pvae.infer.ais_graph import TargetGraph

    m = DrawsInside()
    x = (torch.rand(4, 6) < 0.5).float()
    program = analyse(m.model, m.guide, (x,), {})
    target = Target(m, program, (x,), {}, chains=2)
    said = []
    graph = TargetGraph(target, "guide", say=said.append)
    terms = graph(target.draw("guide"))
    assert not graph.traced and len(said) == 1 and "draws random numbers inside it" in said[0]
    assert all(torch.isfinite(t).all() for t in terms)


# -- the target through inductor (TargetGraph(compile=True)) -----------------------------------------------
def test_the_compiled_target_equals_the_eager_one_and_one_compile_serves_every_batch_of_its_shape(monkeypatch):
    import pvae.infer.ais_graph as ag
    from pvae.infer.ais import ais

    monkeypatch.setattr(ag, "_KEPT", {})
    monkeypatch.setattr(ag, "STEERING_BF16", False)  # float32 gradients: the same trajectories
    m, x = _small_vae()
    program = analyse(m.model, m.guide, (x,), {})
    compiles, graphs = [], []
    for batch in (x, 1.0 - x):  # two batches of one shape, different data (different folded constants)
        target = Target(m, program, (batch,), {}, chains=3)
        u = target.draw("guide")
        graph = ag.TargetGraph(target, "guide", say=pytest.fail, compile=True, on_compiled=lambda: compiles.append(1))
        terms = graph(u)
        assert graph.compiled
        graphs.append(graph.graph)
        for a, b in zip(terms, ag.eager_terms(target, "guide", u)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert len(compiles) == 1 and graphs[0] is graphs[1] and len(ag._KEPT) == 1
    out = []
    for compile in (True, False):  # the whole of AIS on the same draws: compiled, and traced only
        target = Target(m, program, (x,), {}, chains=4)
        torch.manual_seed(5)
        out.append(ais(target, schedule(30), leapfrog=2, compiled=True, compile=compile))
    torch.testing.assert_close(out[0], out[1], rtol=1e-4, atol=1e-3)
    bounds, kept = [], len(ag._KEPT)
    for compile in (True, False):  # BDMC: the reverse direction starts from expanded exact draws, same graph
        bounds.append(pvae.bdmc(m, n=6, steps=20, chains=4, compile=compile, progress=False, seed=3))
    for side in ("lower", "upper"):
        torch.testing.assert_close(bounds[0][side], bounds[1][side], rtol=1e-4, atol=1e-3)
    assert len(ag._KEPT) == kept  # both directions ran the graph compiled above for these shapes


def test_ais_compiles_by_default_only_where_the_run_pays_for_it(monkeypatch, tmp_path):
    from pvae.infer.ais_graph import COMPILE_FROM, compile_choice

    monkeypatch.setenv("PVAE_CACHE_DIR", str(tmp_path))  # nothing compiled before
    m, x = _small_vae()
    cold, warm, graph = COMPILE_FROM["cold"], COMPILE_FROM["warm"], COMPILE_FROM["graph"]
    assert graph < warm < cold
    assert not compile_choice(None, m, (x,), {}, 16, "guide", cold - 1)["compile"]
    choice = compile_choice(None, m, (x,), {}, 16, "guide", cold)
    assert choice["compile"]
    choice["on_compiled"]()  # this graph compiled: the next run of this very shape compiles from far less
    assert compile_choice(None, m, (x,), {}, 16, "guide", graph)["compile"]
    assert not compile_choice(None, m, (x,), {}, 16, "guide", graph - 1)["compile"]
    assert not compile_choice(None, m, (x[:3],), {}, 16, "guide", warm - 1)["compile"]  # another shape: warm
    assert compile_choice(None, m, (x[:3],), {}, 16, "guide", warm)["compile"]
    assert not compile_choice(False, m, (x,), {}, 16, "guide", 10 * cold)["compile"]  # the user's word stands
    assert compile_choice(True, m, (x,), {}, 16, "guide", 1)["compile"]
    with pytest.raises(TypeError, match="compile must be True or False"):
        pvae.log_likelihood(m, x, method="ais", steps=3, compile="yes", progress=False)


def test_a_target_inductor_cannot_compile_runs_traced_and_says_so(monkeypatch):
    import pvae.infer.ais_graph as ag
    import pvae.infer.graphs as graphs
    from pvae.infer import matmul

    tries = []

    def refuses(graph, inputs):
        tries.append(1)
        raise RuntimeError("no C++ compiler here")

    def on_onednn(graph):  # the traced fallback takes the product choice a compiled graph would have had
        return any(getattr(n.target, "__name__", "").startswith("_linear_pointwise") for n in graph.graph.nodes)

    monkeypatch.setattr(ag, "_KEPT", {})
    monkeypatch.setattr(graphs, "_compile_fx", refuses)
    monkeypatch.setattr(matmul, "fastest", lambda *a, **k: "onednn")  # as on a CPU where oneDNN wins
    m, x = _small_vae()
    target = Target(m, analyse(m.model, m.guide, (x,), {}), (x,), {}, chains=3)
    u = target.draw("guide")
    said, compiled = [], []
    graph = ag.TargetGraph(target, "guide", say=said.append, compile=True, on_compiled=lambda: compiled.append(1))
    terms = graph(u)
    assert graph.traced and not graph.compiled and not compiled and list(ag._KEPT.values()) == [None]
    assert len(said) == 1 and "AIS's compiled target" in said[0] and "no C++ compiler here" in said[0]
    assert on_onednn(graph.graph) == matmul.available()
    for a, b in zip(terms, ag.eager_terms(target, "guide", u)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    attempts = len(tries)
    later = Target(m, target.program, (1.0 - x,), {}, chains=3)  # the next batch: no second attempt, nothing said
    graph = ag.TargetGraph(later, "guide", say=said.append, compile=True)
    v = later.draw("guide")
    for a, b in zip(graph(v), ag.eager_terms(later, "guide", v)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert graph.traced and not graph.compiled and len(tries) == attempts and len(said) == 1
    assert on_onednn(graph.graph) == matmul.available()


def test_the_default_compiles_ais_only_on_the_cpu_it_was_priced_on(monkeypatch, tmp_path):
    from pvae.infer.ais_graph import COMPILE_FROM, compile_choice

    monkeypatch.setenv("PVAE_CACHE_DIR", str(tmp_path))
    m, x = _small_vae()
    meta = torch.empty(x.shape, device="meta")  # a tensor on another device, without needing one
    assert compile_choice(None, m, (x,), {}, 16, "guide", COMPILE_FROM["cold"])["compile"]
    assert not compile_choice(None, m, (meta,), {}, 16, "guide", 100 * COMPILE_FROM["cold"])["compile"]
    assert compile_choice(True, m, (meta,), {}, 16, "guide", 1)["compile"]


def _bf16_or_skip():
    from pvae.infer.matmul import bf16_supported

    if not bf16_supported():
        pytest.skip("this CPU has no native bfloat16 products")


def test_products_that_only_steer_hmc_take_bfloat16_and_the_log_densities_stay_exact(monkeypatch):
    """`steering_products`: a product no log density depends on takes bfloat16 inputs; the log
    densities are bit for bit the float32 graph's, the gradients within bfloat16's rounding."""
    from torch.fx.experimental.proxy_tensor import make_fx

    import pvae.infer.matmul as matmul
    from pvae.infer.ais_graph import steering_products

    _bf16_or_skip()
    monkeypatch.setattr(matmul, "bf16_faster", lambda a, b: True)
    torch.manual_seed(0)
    w1, w2, x = torch.randn(4, 64), torch.randn(64, 96), torch.rand(32, 96)

    def terms(z):
        z = z.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = torch.tanh(z @ w1) @ w2
            lp = -torch.nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(1)
            (g,) = torch.autograd.grad(lp.sum(), [z])
        return lp.detach(), g

    z = torch.randn(32, 4)
    exact = make_fx(terms)(z)
    steered = make_fx(terms)(z)
    assert steering_products(steered, values=1) == 2  # the two products of the backward pass, not the forward's
    (lp0, g0), (lp1, g1) = exact(z), steered(z)
    assert torch.equal(lp0, lp1)
    assert not torch.equal(g0, g1) and float((g1 - g0).abs().max()) < 2e-2 * float(g0.abs().max())
    assert str(steered.code).count("torch.bfloat16") >= 2
    monkeypatch.setattr(matmul, "bf16_supported", lambda: False)
    assert steering_products(make_fx(terms)(z), values=1) == 0  # a CPU without it keeps float32


def test_ais_with_bfloat16_steering_still_converges_to_the_exact_log_likelihood(lg, monkeypatch):
    """The Metropolis test and the weights use float32 log densities, so AIS with every gradient
    product in bfloat16 still estimates the exact log p(x) of a linear-Gaussian model (stated: 200
    steps, 16 chains, 10 leapfrog steps, mean error within 0.05 nats), and HMC still accepts."""
    import pvae.infer.ais_graph as ag
    import pvae.infer.matmul as matmul

    _bf16_or_skip()
    rewritten = []
    real = ag.steering_products
    monkeypatch.setattr(matmul, "bf16_faster", lambda a, b: True)
    monkeypatch.setattr(ag, "steering_products", lambda gm, values=4: rewritten.append(real(gm, values)) or rewritten[-1])
    m, x = lg
    with torch.no_grad():
        m.log_sigma_q.fill_(math.log(2.5))
    exact = m.exact_log_p(x)
    torch.manual_seed(1)
    ll = pvae.log_likelihood(m, x, method="ais", steps=200, chains=16, leapfrog=10, progress=False, compile=False)
    assert rewritten and rewritten[0] >= 1, rewritten
    assert abs(float((ll - exact).mean())) < 0.05
    assert float((ll - exact).abs().mean()) < 0.1
