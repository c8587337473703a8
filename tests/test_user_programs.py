"""Users' own Pyro programs, unchanged: each class of program (tests/programs.py) trains through
pvae.fit exactly as Pyro's SVI trains it (same loss and same parameters after a step, from the
same initial values and draws), and evaluates per datapoint, against a closed form where one
exists (linear-Gaussian: the guide is the exact posterior, so log p(x) is exact at any k)."""

import warnings
from pathlib import Path

import pytest
import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO, TraceGraph_ELBO, TraceMeanField_ELBO
from torch import nn

import pvae
from pvae.infer.sites import Program
from pvae.infer.program import log_weight_terms

import programs as P
from linear_gaussian import PPCA
from test_bounds import FixDraws

N = 24


@pytest.fixture(autouse=True)
def fresh_store():
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


def binary(n=N, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, d, generator=g) < 0.3).float()


def snapshot(m):
    out = {f"module:{k}": v.detach().clone() for k, v in m.named_parameters()}
    out.update({f"store:{k}": v.detach().clone() for k, v in pyro.get_param_store().items()})
    return out


def one_step_pvae(build, data, objective, seed=0, lr=0.05):
    pyro.clear_param_store()
    m = build()
    h = pvae.fit(m, data, objective=objective, epochs=1, batch_size=N, lr=lr, seed=seed, progress=False)
    return h[0]["train_loss"] * N, snapshot(m), h


def one_step_svi(build, data, elbo, seed=0, lr=0.05):
    pyro.clear_param_store()
    m = build()
    perm = torch.randperm(N, generator=torch.Generator().manual_seed(seed))  # pvae.fit's first batch
    if isinstance(data, dict):
        args, kwargs = (), {k: v[perm] for k, v in data.items()}
    else:
        args, kwargs = tuple(d[perm] for d in (data if isinstance(data, tuple) else (data,))), {}
    pyro.set_rng_seed(seed)
    svi = SVI(m.model, m.guide, pyro.optim.Adam({"lr": lr}), loss=elbo)
    return svi.step(*args, **kwargs), snapshot(m)


def assert_same_as_svi(build, data, objective, elbo, moved=()):
    """Same loss and the same parameters after one step as Pyro's SVI; ``moved`` must change."""
    before = (pyro.clear_param_store(), snapshot(build()))[1]
    loss, params, h = one_step_pvae(build, data, objective)
    svi_loss, svi_params = one_step_svi(build, data, elbo)
    assert loss == pytest.approx(svi_loss, rel=1e-5, abs=1e-4)
    assert loss != 0.0
    assert set(params) == set(svi_params)
    for k in params:
        torch.testing.assert_close(params[k], svi_params[k], rtol=1e-5, atol=1e-6, msg=k)
    for k in moved:
        assert not torch.allclose(params[k], before.get(k, params[k] + 1)), f"{k} did not train"
    return h


# -- plates -----------------------------------------------------------------------------------

@pytest.mark.parametrize("plate,sized", [("documents", True), ("batch", False), ("data", False)])
def test_a_plate_named_anything_or_sizeless_gives_the_same_numbers(plate, sized):
    x = binary()
    ref = P.ExampleVAE(x_dim=16, hidden=8)
    other = P.ExampleVAE(x_dim=16, hidden=8, plate=plate, sized=sized)
    torch.manual_seed(3)
    a = pvae.log_likelihood(ref, x, k=7, progress=False)
    torch.manual_seed(3)
    b = pvae.log_likelihood(other, x, k=7, progress=False)
    torch.testing.assert_close(a, b)
    # every objective and the test ELBO run on it
    for objective in ("elbo", "iwae:k=3", "mf-elbo"):
        h = pvae.fit(P.ExampleVAE(x_dim=16, hidden=8, plate=plate, sized=sized), x, objective=objective,
                     epochs=1, batch_size=8, test=x, progress=False)
        assert h.program.data_plate == plate and h[0]["test_elbo"] < 0


def test_the_data_plate_is_found_or_named_and_a_site_outside_it_is_named():
    m = P.LinearGaussian(plate="rows")
    v = m.sample_v(N)
    assert pvae.fit(m, v, epochs=0, progress=False).program.data_plate == "rows"  # not "features"
    five = m.sample_v(5)  # as many datapoints as features: which plate runs over the data?
    with pytest.raises(ValueError, match=r"plates \[.*\] all run over .* data_plate="):
        pvae.log_likelihood(P.LinearGaussian(plate="rows"), five, k=2, progress=False)
    ll = pvae.log_likelihood(P.LinearGaussian(plate="rows"), five, k=2, progress=False, data_plate="rows")
    torch.testing.assert_close(ll, m.exact_log_p(five), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match=r"data_plate='cells'.*plates found: 'rows', 'features'"):
        pvae.fit(P.LinearGaussian(plate="rows"), v, data_plate="cells", epochs=0, progress=False)

    def model(x):
        w = pyro.sample("w", dist.Normal(0.0, 1.0))
        with pyro.plate("items", x.shape[0]):
            pyro.sample("x", dist.Normal(w, 1.0), obs=x[:, 0])

    def guide(x):
        pyro.sample("w", dist.Normal(pyro.param("w_loc", torch.tensor(0.0)), 1.0))

    with pytest.raises(ValueError, match=r"'w' is outside the data plate 'items' \(in no plate\)"):
        pvae.log_weight_terms(model, guide, v, num_particles=2)
    with pytest.raises(ValueError, match=r"site 'w' is outside the data plate 'items' \(a global latent\).*'elbo'"):
        pvae.fit(model, v, guide=guide, objective="iwae:k=2", epochs=1, progress=False)


# -- nets that cannot take a particle dim -------------------------------------------------------

def test_vectorized_and_sequential_particles_give_the_same_log_weights_on_the_same_draws():
    m = P.ExampleVAE(x_dim=16, hidden=8)
    x = binary(6)
    z = torch.randn(3, 6, 4)

    def fixed(values):  # the guide's draws of "latent", fixed (still unobserved: scored as draws of q)
        return FixDraws({"latent": values})(m.guide)

    vec = Program("data", 1, vectorize=True)
    seq = Program("data", 1, vectorize=False)
    with torch.no_grad():
        a = log_weight_terms(m.model, fixed(z), x, num_particles=3, program=vec)
        b = [log_weight_terms(m.model, fixed(z[i]), x, num_particles=1, program=seq) for i in range(3)]
    for field in ("log_px_z", "log_pz", "log_qz"):
        torch.testing.assert_close(getattr(a, field), torch.cat([getattr(t, field) for t in b]))
    folded = Program("data", 1, vectorize=False, foldable=True)  # particles into the batch: rows j * 6 + i
    with torch.no_grad():
        c = log_weight_terms(m.model, fixed(z.reshape(18, 4)), x, num_particles=3, program=folded, fold=True)
    for field in ("log_px_z", "log_pz", "log_qz"):
        torch.testing.assert_close(getattr(c, field), torch.cat([getattr(t, field) for t in b]))


class FlatPPCA(PPCA):
    """PPCA whose model flattens z as Pyro's examples/vae nets do: no particle dim."""

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], self.z_dim), 1.0).to_event(1))
            mean = z.reshape(-1, self.z_dim) @ self.W.T + self.b
            pyro.sample("x", dist.Normal(mean.reshape(x.shape), self.sigma).to_event(1), obs=x)


class BatchSizedPPCA(FlatPPCA):
    """Its likelihood's scale depends on the batch size: folding the particles would change it."""

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], self.z_dim), 1.0).to_event(1))
            mean = z.reshape(-1, self.z_dim) @ self.W.T + self.b
            pyro.sample("x", dist.Normal(mean.reshape(x.shape), self.sigma * x.shape[0] / 10).to_event(1), obs=x)


def test_sequential_programs_fold_particles_into_the_batch_for_evaluation_where_that_is_exact():
    m = FlatPPCA()
    x = m.sample_x(10)
    m.set_guide()  # the posterior's mean and marginal sds (its correlation left out): IS close to exact
    with pytest.warns(UserWarning, match="do not take a leading particle dim"):
        ll = pvae.log_likelihood(m, x, k=50, progress=False)
    program = m._pvae_program
    assert not program.vectorize and program.foldable
    torch.testing.assert_close(ll, m.exact_log_px(x), atol=0.05, rtol=0)
    m.set_guide(mean_shift=0.1, scale_factor=1.3)  # a poorer guide: folded and sequential agree within noise
    torch.manual_seed(0)
    folded = pvae.evaluate(m, x, k=400, progress=False, units=False)
    assert any("folded into the batch" in n for n in folded["summary"]["notes"])
    program.foldable = False  # force one trace per particle
    torch.manual_seed(1)
    seq = pvae.evaluate(m, x, k=400, progress=False, units=False)
    assert any("sequentially" in n for n in seq["summary"]["notes"])
    diff = (folded["log_px"] - seq["log_px"]).abs()
    assert bool((diff < 4 * (folded["log_px_mc_se"] ** 2 + seq["log_px_mc_se"] ** 2).sqrt() + 1e-3).all())

    odd = BatchSizedPPCA()
    with pytest.warns(UserWarning, match="do not take a leading particle dim"):
        pvae.log_likelihood(odd, x, k=5, progress=False)
    assert odd._pvae_program.foldable is False  # the trial found different log-weights: one trace per particle


def test_batchnorm_nets_and_a_plate_named_batch_draw_particles_one_trace_at_a_time():
    x = binary(N, 16)
    with pytest.warns(UserWarning, match="do not take a leading particle dim"):
        h = assert_same_as_svi(lambda: P.init_(P.BatchNormVAE(x_dim=16, hidden=8)), x, pvae.objective("elbo", k=2),
                               Trace_ELBO(num_particles=2), moved=["module:dec.0.weight"])
    assert not h.program.vectorize and h.program.data_plate == "batch"
    m = P.init_(P.BatchNormVAE(x_dim=16, hidden=8))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        h = pvae.fit(m, x, objective="iwae:k=3", epochs=2, batch_size=8, test=x, progress=False)
    ev = pvae.evaluate(m, x, k=200, progress=False)
    assert ev["log_px"].shape == (N,)
    assert ev["summary"]["log_px"] >= ev["summary"]["elbo"]
    assert any("folded into the batch" in n for n in ev["summary"]["notes"])  # eval mode: rows independent
    with pytest.raises(ValueError, match="DReGIWAE needs nets that take a leading particle dim"):
        pvae.fit(m, x, objective="iwae-dreg:k=3", epochs=1, progress=False)


def test_boolean_masks_and_view_batch_in_a_cvae_with_image_valued_conditioning():
    xs, ys = P.quadrant_data(N)
    with pytest.warns(UserWarning, match="particle dim"):
        assert_same_as_svi(lambda: P.QuadrantCVAE(), (xs, ys), "elbo", Trace_ELBO(),
                           moved=["store:cvae$$$recognition_net.0.weight"])
    m = P.QuadrantCVAE()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        h = pvae.fit(m, (xs, ys), objective="iwae:k=3", epochs=3, batch_size=8, test=(xs, ys), progress=False)
        ll = pvae.log_likelihood(m, (xs, ys), k=100, progress=False)
    assert ll.shape == (N,) and float(ll.mean()) >= h[-1]["test_elbo"]


# -- Pyro's parameter store -------------------------------------------------------------------

def test_global_pyro_param_and_pyro_module_train_as_with_svi_and_are_checkpointed(tmp_path):
    x = P.count_data(N)
    assert_same_as_svi(lambda: P.CountVAE(), x, "elbo", Trace_ELBO(),
                       moved=["store:inverse_dispersion", "module:dec.0.weight"])
    # checkpoint and resume: two epochs in two runs equal two epochs in one
    pyro.clear_param_store()
    pvae.fit(P.CountVAE(), x, epochs=2, batch_size=8, lr=0.05, progress=False)
    whole = pyro.param("inverse_dispersion").detach().clone()
    pyro.clear_param_store()
    pvae.fit(P.CountVAE(), x, epochs=1, batch_size=8, lr=0.05, progress=False, run_dir=tmp_path)
    pyro.clear_param_store()
    pvae.fit(P.CountVAE(), x, epochs=2, batch_size=8, lr=0.05, progress=False, run_dir=tmp_path, resume=tmp_path)
    torch.testing.assert_close(pyro.param("inverse_dispersion"), whole)
    pyro.clear_param_store()
    pvae.load(tmp_path, model=P.CountVAE())
    torch.testing.assert_close(pyro.param("inverse_dispersion"), whole)


def test_plain_functions_with_pyro_module_train_and_an_unregistered_net_is_an_error():
    x = binary(N, 16)
    enc, dec = nn.Linear(16, 4), nn.Linear(2, 16)

    def model(x):
        pyro.module("dec", dec)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=dec(z)).to_event(1), obs=x)

    def guide(x):
        pyro.module("enc", enc)
        loc, log_scale = enc(x).chunk(2, -1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))

    before = dec.weight.detach().clone()
    pvae.fit(model, x, guide=guide, epochs=1, batch_size=8, progress=False)
    assert not torch.equal(dec.weight, before)

    def guide_unregistered(x):  # enc used, but neither registered nor passed as modules=
        loc, log_scale = enc(x).chunk(2, -1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))

    with pytest.raises(ValueError, match=r"the loss depends on 2 tensor\(s\) that would not be trained"):
        pvae.fit(model, x, guide=guide_unregistered, epochs=1, progress=False)


# -- conditioning and several inputs ---------------------------------------------------------

class LabelSpy(nn.Module):
    """model(xs, ys=None) records what reaches it."""

    def __init__(self):
        super().__init__()
        self.net, self.seen = nn.Linear(4, 2), []

    def model(self, xs, ys=None):
        self.seen.append(ys)
        with pyro.plate("data", xs.shape[0]):
            z = pyro.sample("z", dist.Normal(xs.new_zeros(xs.shape[0], 1), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z + self.net(xs)[:, :1], 1.0).to_event(1), obs=xs[:, :1])

    def guide(self, xs, ys=None):
        with pyro.plate("data", xs.shape[0]):
            pyro.sample("z", dist.Normal(self.net(xs)[:, 1:], 1.0).to_event(1))


def test_labels_reach_a_model_that_takes_them_and_extra_members_are_never_dropped():
    x, y = torch.randn(N, 4), torch.arange(N) % 3
    spy = LabelSpy()
    pvae.fit(spy, pvae.Data(x, y), epochs=1, batch_size=N, progress=False)
    assert all(s is not None and s.shape == (N,) for s in spy.seen)
    spy.seen.clear()
    pvae.log_likelihood(spy, x, k=2, labels=y, progress=False)
    assert spy.seen and all(s is not None for s in spy.seen)
    with pytest.raises(ValueError, match=r"data member 3 of the training data \(shape \(24,\)\) is taken by no argument "
                                         r"of the model, which takes 2 positional argument\(s\) \(xs, ys\)"):
        pvae.fit(spy, (x, y, y), epochs=1, progress=False)
    with pytest.raises(ValueError, match=r"data\['b'\] of the training data is taken by no argument of the model"):
        pvae.fit(spy, {"xs": x, "b": y}, epochs=1, progress=False)
    m = P.ExampleVAE(x_dim=16, hidden=8)
    with pytest.raises(ValueError, match="labels= were given, but the model takes no second argument"):
        pvae.fit(m, binary(), labels=y, epochs=1, progress=False)
    h = pvae.fit(m, pvae.Data(binary(), y), epochs=1, progress=False)
    assert "carry labels, and the model takes only (x): the labels were not passed" in h.notes[0]


def test_several_observed_inputs_per_datapoint_train_as_svi_and_score_all_of_them():
    m = P.LinearGaussian(split=True)
    v = m.sample_v(N)
    data = (v[:, :2], v[:, 2:4], v[:, 4:])
    assert_same_as_svi(lambda: P.LinearGaussian(split=True), data, "elbo", Trace_ELBO(),
                       moved=["store:linear_gaussian$$$log_sigma_q"])
    ll = pvae.log_likelihood(m, torch.utils.data.TensorDataset(*data), k=3, progress=False)
    torch.testing.assert_close(ll, m.exact_log_p(v), atol=1e-4, rtol=0)
    # changing b changes both the training loss and log p: b is observed, not dropped
    b2 = data[2] + 1.0
    ll2 = pvae.log_likelihood(m, (data[0], data[1], b2), k=3, progress=False)
    assert (ll2 - ll).abs().min() > 1e-3
    ev = pvae.evaluate(m, {"x": data[0], "a": data[1], "b": data[2]}, k=3, progress=False, units=False)
    torch.testing.assert_close(ev["log_px"], ll)


# -- training scales -------------------------------------------------------------------------

class ScaledPair:
    """A pair's model (and guide) wrapped in poutine.scale on the latent site, the Pyro way."""

    def __init__(self, build, scale, scale_guide):
        self.build, self.scale, self.scale_guide = build, scale, scale_guide

    def __call__(self):
        inner = self.build()
        scale, scale_guide = self.scale, self.scale_guide

        class Scaled(nn.Module):
            def __init__(self):
                super().__init__()
                self.inner = inner

            def model(self, x):
                with pyro.poutine.scale(scale=scale):
                    return self.inner.model(x)

            def guide(self, x):
                with pyro.poutine.scale(scale=scale if scale_guide else 1.0):
                    return self.inner.guide(x)

        return Scaled()


@pytest.mark.parametrize("scale_guide", [True, False])
def test_poutine_scale_is_honoured_in_training_and_left_out_of_evaluation(scale_guide):
    v = P.LinearGaussian().sample_v(N)
    build = lambda: P.LinearGaussian(scale=0.25, scale_guide=scale_guide)  # noqa: E731
    assert_same_as_svi(build, v, "elbo", Trace_ELBO(), moved=["store:linear_gaussian$$$log_sigma_q"])
    m = build()
    ev = pvae.evaluate(m, v, k=3, progress=False, units=False)
    torch.testing.assert_close(ev["log_px"], m.exact_log_p(v), atol=1e-4, rtol=0)
    assert "training scales on ['z'] ignored for evaluation" in ev["summary"]["notes"]
    h = pvae.fit(build(), v, epochs=1, batch_size=8, test=v, progress=False)
    torch.testing.assert_close(torch.tensor(h[0]["test_elbo"]), pvae.evaluate(
        h.model, v, k=1, progress=False, units=False, khat=False)["elbo"].mean(), atol=0.5, rtol=0)
    mf = lambda: P.ExampleVAE(x_dim=16, hidden=8)  # noqa: E731
    for objective, elbo in (("mf-elbo", TraceMeanField_ELBO()), ("enum-elbo", TraceEnum_ELBO(max_plate_nesting=1))):
        scaled = ScaledPair(mf, 0.25, scale_guide)
        assert_same_as_svi(scaled, binary(), objective, elbo, moved=["store:decoder$$$fc1.weight"])
    if scale_guide:  # one scale on every latent site: beta, as pvae's own bounds define it
        pvae.fit(build(), v, objective="iwae:k=3", epochs=1, progress=False)
    else:
        with pytest.raises(ValueError, match="scales its sites differently .* train with 'elbo'"):
            pvae.fit(build(), v, objective="iwae:k=3", epochs=1, progress=False)


# -- global latents ---------------------------------------------------------------------------

def test_global_latents_train_as_svi_and_evaluation_holds_them_at_the_guide_mean():
    build = lambda: P.LinearGaussian(global_sigma=True)  # noqa: E731
    v = build().sample_v(N)
    assert_same_as_svi(build, v, "elbo", Trace_ELBO(), moved=["store:sigma_loc"])
    m = build()
    pvae.fit(m, v, epochs=2, batch_size=8, progress=False)
    with torch.no_grad():
        m.log_sigma_q.zero_()  # the guide is the exact posterior of z again (given sigma)
    loc, scale = pyro.param("sigma_loc").detach(), pyro.param("sigma_scale").detach()
    sigma_mean = float(torch.exp(loc + scale ** 2 / 2))
    ev = pvae.evaluate(m, v, k=3, progress=False, units=False)
    torch.testing.assert_close(ev["log_px"], m.exact_log_p(v, sigma=sigma_mean), atol=2e-3, rtol=0)
    assert any("global latents ['sigma'] fixed at their guide mean" in n for n in ev["summary"]["notes"])


# -- masks, factors, deterministic sites, program-side subsampling ---------------------------

@pytest.mark.parametrize("how", ["obs_mask", "poutine", "dist"])
def test_masked_observations_contribute_nothing_to_log_px(how):
    m = P.LinearGaussian(how=how)
    v = m.sample_v(N)
    mask = torch.rand(N, 5, generator=torch.Generator().manual_seed(2)) < 0.6
    mask[0] = False  # a datapoint with nothing observed: log p = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # obs_mask's x_unobserved site is no model/guide mismatch
        ll = pvae.log_likelihood(m, {"x": v, "m": mask}, k=3, progress=False)
    torch.testing.assert_close(ll, m.exact_log_p(v, mask), atol=1e-4, rtol=0)
    assert float(ll[0]) == pytest.approx(0.0, abs=1e-5)
    if how != "obs_mask":  # obs_mask's unobserved entries are drawn from the model (a latent without a guide)
        assert_same_as_svi(lambda: P.LinearGaussian(how=how), {"x": v, "m": mask}, "elbo", Trace_ELBO(),
                           moved=["store:linear_gaussian$$$log_sigma_q"])


def test_factor_adds_its_value_and_program_side_subsampling_keeps_the_data_order():
    m = P.LinearGaussian(factor=-1.25, plate="rows", subsample=True)
    v = m.sample_v(N)
    ll = pvae.log_likelihood(m, v, k=3, progress=False)
    torch.testing.assert_close(ll, m.exact_log_p(v), atol=1e-4, rtol=0)  # exact_log_p adds the factor
    assert_same_as_svi(lambda: P.LinearGaussian(factor=-1.25, plate="rows", subsample=True), v, "elbo",
                       Trace_ELBO(), moved=["store:linear_gaussian$$$log_sigma_q"])

    def model(x):
        with pyro.plate("data", x.shape[0], subsample_size=4) as ind:
            pyro.sample("x", dist.Normal(0.0, 1.0), obs=x[ind, 0])

    def guide(x):
        pass

    with pytest.raises(ValueError, match=r"subsamples plate 'data' itself \(4 of 24 datapoints"):
        pvae.log_likelihood(model, v, guide=guide, k=2, progress=False)


def test_pyro_elbo_instances_and_subclasses_train_as_svi():
    class MyELBO(Trace_ELBO):
        pass

    v = P.LinearGaussian().sample_v(N)
    for elbo in (TraceGraph_ELBO(), MyELBO()):
        assert_same_as_svi(lambda: P.LinearGaussian(), v, elbo, type(elbo)(),
                           moved=["store:linear_gaussian$$$log_sigma_q"])


# -- guards kept with validation off ---------------------------------------------------------

def test_guards_mf_elbo_enum_elbo_and_compare_before_training(tmp_path):
    x = binary(N, 16)
    with pytest.raises(ValueError, match="mf-elbo needs reparameterized guide sites, and site 'y'"):
        pvae.fit(P.M2Style(), x, objective="mf-elbo", epochs=1, progress=False)
    with pytest.warns(UserWarning, match="no site marked for enumeration"):
        pvae.fit(P.ExampleVAE(x_dim=16, hidden=8), x, objective="enum-elbo", epochs=1, progress=False)
    h = pvae.fit(P.M2Style(), x, objective="enum-elbo", epochs=2, batch_size=8, test=x, progress=False)
    assert pvae.log_likelihood(h.model, x, k=50, progress=False).mean() >= h[-1]["test_elbo"]
    with pytest.raises(ValueError, match=r"objective 'iwae:k=2': .* needs reparameterized latents"):
        pvae.compare(P.M2Style, x, x, objectives=["enum-elbo", "iwae:k=2"], epochs=1, eval_k=5,
                     run_dir=tmp_path / "cmp", progress=False)
    assert not (tmp_path / "cmp").exists()  # nothing trained


def test_compare_runs_users_programs_with_fresh_store_parameters(tmp_path):
    x = P.count_data(N)
    out = pvae.compare(P.CountVAE, x, x, objectives=["elbo", "iwae:k=2"], epochs=1, batch_size=8, eval_k=10,
                       run_dir=tmp_path, progress=False)
    assert [r["objective"] for r in out["rows"]] == ["elbo", "iwae:k=2"]
    assert all(r["log_px"] < 0 for r in out["rows"])
    assert (tmp_path / "compare.md").exists()


def test_cli_trains_evaluates_and_compares_a_program_of_your_own(tmp_path, capsys):
    from pathlib import Path

    from pvae.cli import main

    spec = f"{Path(P.__file__)}:ExampleVAE"
    common = ["--binarize", "static", "--n-train", "200", "--n-test", "30", "--epochs", "1", "--quiet"]
    assert main(["train", "--model", spec, "--data-plate", "data", "--eval-k", "10",
                 "--run-dir", str(tmp_path / "run"), *common]) == 0
    saved = (tmp_path / "run" / "data.json").read_text()
    assert '"program"' in saved and '"data_plate": "data"' in saved
    first = (tmp_path / "run" / "results.json").read_text()
    assert main(["eval", str(tmp_path / "run"), "--model", spec, "--k", "10", "--quiet"]) == 0  # named again (issue 29)
    assert '"log_px"' in first and '"log_px"' in (tmp_path / "run" / "results.json").read_text()
    assert main(["compare", "--model", spec, "--objectives", "elbo", "iwae:k=2", "--eval-k", "5",
                 "--run-dir", str(tmp_path / "cmp"), *common]) == 0
    assert (tmp_path / "cmp" / "compare.md").exists()
    assert main(["train", "--model", spec, "--data-plate", "cells", "--run-dir", str(tmp_path / "bad"), *common]) == 2
    assert "data_plate='cells'" in capsys.readouterr().err


def test_an_npz_with_several_arrays_reaches_the_model_by_keyword(tmp_path):
    m = P.LinearGaussian(split=True)
    v = m.sample_v(N)
    import numpy as np

    np.savez(tmp_path / "views.npz", x=v[:, :2].numpy(), a=v[:, 2:4].numpy(), b=v[:, 4:].numpy())
    ll = pvae.log_likelihood(m, str(tmp_path / "views.npz"), k=3, progress=False)
    torch.testing.assert_close(ll, m.exact_log_p(v), atol=1e-4, rtol=0)
    np.savez(tmp_path / "extra.npz", x=v[:, :2].numpy(), a=v[:, 2:4].numpy(), b=v[:, 4:].numpy(), c=v.numpy())
    with pytest.raises(ValueError, match=r"data\['c'\] of the evaluation data is taken by no argument of the model"):
        pvae.log_likelihood(m, str(tmp_path / "extra.npz"), k=3, progress=False)


def test_broken_pairs_are_refused_before_training():
    x = binary(N, 16)
    m = P.ExampleVAE(x_dim=16, hidden=8)

    def model_without_obs(x):  # the observed site lost its obs=
        pyro.module("decoder", m.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("latent", dist.Normal(x.new_zeros(x.shape[0], 4), 1.0).to_event(1))
            pyro.sample("obs", dist.Bernoulli(m.decoder(z)).to_event(1))
            pyro.sample("x", dist.Bernoulli(m.decoder(z)).to_event(1), obs=x)

    def guide_with_extra(x):
        m.guide(x)
        pyro.sample("extra", dist.Normal(0.0, 1.0))

    for objective in ("elbo", "iwae:k=2"):
        with pytest.raises(ValueError, match="latent site 'obs' of the model has no match in the guide .*obs="):
            pvae.fit(model_without_obs, x, guide=m.guide, modules=m, objective=objective, epochs=1, progress=False)
        with pytest.raises(ValueError, match="the guide samples 'extra', which the model does not"):
            pvae.fit(m.model, x, guide=guide_with_extra, modules=m, objective=objective, epochs=1, progress=False)


def test_pyrosample_weights_with_an_autoguide_train_as_svi_and_evaluate_at_the_guide_mean():
    x = torch.randn(N, 6)

    def build():
        torch.manual_seed(0)  # nn.Linear's own initialization
        m = P.BayesianDecoderVAE()
        with torch.random.fork_rng():
            m.guide(x[:2])  # the autoguide sets itself up (as it would on SVI's first step)
        return m

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert_same_as_svi(build, x, "elbo", Trace_ELBO(), moved=["store:enc$$$weight"])
        m = build()
        h = pvae.fit(m, x, epochs=2, batch_size=8, test=x, progress=False)
        ev = pvae.evaluate(m, x, k=100, progress=False)
    assert ev["summary"]["log_px"] >= ev["summary"]["elbo"]
    assert any("global latents" in n for n in h.notes)
    assert ev["summary"]["notes"][0].startswith("global latents ['weight'] fixed at their guide mean")
    with pytest.raises(ValueError, match="outside the data plate 'data' \\(a global latent\\)"):
        pvae.fit(build(), x, objective="iwae:k=2", epochs=1, progress=False)


def test_a_discrete_site_enumerated_in_the_model_only_trains_under_enum_elbo_and_evaluates():
    """A mixture-of-Gaussians prior whose component c the model enumerates (no guide site)."""
    from pyro.infer import TraceEnum_ELBO

    class MixturePrior(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc, self.dec = nn.Linear(16, 4), nn.Linear(2, 16)
            self.means = nn.Parameter(torch.tensor([[-2.0, 0.0], [2.0, 0.0]]))
            P.init_(self)

        def model(self, x):
            pyro.module("mix", self)
            with pyro.plate("data", x.shape[0]):
                c = pyro.sample("c", dist.Categorical(logits=x.new_zeros(2)), infer={"enumerate": "parallel"})
                z = pyro.sample("z", dist.Normal(self.means[c], 1.0).to_event(1))
                pyro.sample("x", dist.Bernoulli(logits=self.dec(z)).to_event(1), obs=x)

        def guide(self, x):
            pyro.module("mix", self)
            loc, log_scale = self.enc(x).chunk(2, -1)
            with pyro.plate("data", x.shape[0]):
                pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))

    x = binary(N, 16)
    assert_same_as_svi(MixturePrior, x, "enum-elbo", TraceEnum_ELBO(max_plate_nesting=1), moved=["store:mix$$$means"])
    with pytest.raises(ValueError, match="latent site 'c' of the model has no match in the guide"):
        pvae.fit(MixturePrior(), x, objective="elbo", epochs=1, progress=False)
    m = MixturePrior()
    h = pvae.fit(m, x, objective="enum-elbo", epochs=2, batch_size=8, test=x, progress=False)
    # c is drawn from its prior by the evaluator (its density cancels): still an unbiased p(x) estimate
    ll = pvae.log_likelihood(m, x, k=2000, progress=False)
    assert float(ll.mean()) >= h[-1]["test_elbo"] - 0.5


def test_cli_passes_several_npz_arrays_to_a_program_of_your_own(tmp_path, capsys):
    import json

    import numpy as np

    from pvae.cli import main

    m = P.LinearGaussian(split=True)
    v = m.sample_v(60).numpy()
    np.savez(tmp_path / "views.npz", train_x=v[:40, :2], train_a=v[:40, 2:4], train_b=v[:40, 4:],
             test_x=v[40:, :2], test_a=v[40:, 2:4], test_b=v[40:, 4:])
    (tmp_path / "prog.py").write_text(f"import sys\nsys.path.insert(0, {str(Path(P.__file__).parent)!r})\n"
                                      "import programs\n\ndef Views():\n    return programs.LinearGaussian(split=True)\n")
    run = tmp_path / "run"
    assert main(["train", "--model", f"{tmp_path / 'prog.py'}:Views", "--dataset", str(tmp_path / "views.npz"),
                 "--epochs", "0", "--eval-k", "3", "--run-dir", str(run), "--quiet"]) == 0
    results = json.loads((run / "results.json").read_text())
    exact = float(m.exact_log_p(torch.from_numpy(v[40:])).mean())
    assert results["log_px"] == pytest.approx(exact, abs=1e-3)  # the exact-posterior guide: exact at any k
