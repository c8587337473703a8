"""The seams of issue 29 beyond run folders (tests/test_run_folders.py): signals always win, checks
come before the work, the compiled step follows Python state, densities only where they exist."""

import os
import signal

import pytest

import pvae
from pvae.cli import main

TINY = ["--n-train", "120", "--n-test", "20", "--epochs", "1", "--hidden", "8", "--latent-dim", "2", "--quiet",
        "--binarize", "static", "--eval-k", "0"]


def _terminate(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    raise AssertionError("SIGTERM was not delivered")


@pytest.mark.parametrize("where", ["torch.fx.experimental.proxy_tensor.make_fx", "pvae.infer.graphs._compile_fx"])
def test_sigterm_while_tracing_or_compiling_stops_the_run(where, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(where, _terminate)
    run = tmp_path / "run"
    assert main(["train", *TINY, "--compile-step", "on", "--run-dir", str(run)]) == 143
    assert "stopped by SIGTERM" in capsys.readouterr().err
    assert not (run / "checkpoint.pt").exists() and not (run / ".pvae.lock").exists()
    assert (run / "data.json").exists()  # what the run trained on is known


# -- 7. a density is claimed only where one exists ------------------------------------------------------------
import pyro  # noqa: E402
import pyro.distributions as dist  # noqa: E402
import torch  # noqa: E402

X = (torch.rand(12, 784, generator=torch.Generator().manual_seed(0)) > 0.5).float()


def delta_program():
    net = torch.nn.Linear(784, 2)
    dec = torch.nn.Linear(2, 784)

    def model(x):
        pyro.module("dec", dec)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([x.shape[0], 2]).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=dec(z)).to_event(1), obs=x)

    def guide(x):
        pyro.module("enc", net)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Delta(net(x)).to_event(1))  # a point estimate per datapoint

    return model, guide, torch.nn.ModuleList([net, dec])


@pytest.mark.parametrize("which", ["ae", "vqvae", "delta"])
def test_point_mass_guides_get_no_log_px_from_is_ais_or_bdmc(which):
    if which == "delta":
        model, guide, modules = delta_program()
        kw = {"guide": guide, "modules": modules}
    else:
        model = pvae.AE(x_shape=(784,), latent_dim=2, hidden=(8,)) if which == "ae" else \
            pvae.VQVAE(x_shape=(784,), num_codes=4, code_dim=2, hidden=(8,), num_latents=2)
        kw = {}
    for call in (lambda: pvae.log_likelihood(model, X[:4], k=5, progress=False, **kw),
                 lambda: pvae.log_likelihood(model, X[:4], method="ais", steps=3, chains=2, progress=False, **kw),
                 lambda: pvae.bdmc(model, n=2, steps=3, chains=2, data=X[:2], progress=False, **kw)):
        with pytest.raises(ValueError, match=r"needs a guide with a density.*point mass \(Delta\)"):
            call()
    out = pvae.evaluate(model, X[:4], k=50, progress=False, **kw)
    s = out["summary"]
    assert "log_px" not in s and "elbo" not in s and "log_px" not in out and s["k"] == 1
    assert s["recon"] < 0 and any("point mass" in n for n in s["notes"])


def test_a_point_estimate_of_a_global_latent_still_gets_log_px():
    model, guide, modules = delta_program()

    def global_model(x):
        b = pyro.sample("b", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Bernoulli(logits=b.expand(x.shape[0], 784)).to_event(1), obs=x)

    def global_guide(x):
        pyro.sample("b", dist.Delta(pyro.param("b_map", torch.tensor(0.3))))

    pyro.clear_param_store()
    with pytest.warns(UserWarning):  # the global latent is held at its point: said
        ll = pvae.log_likelihood(global_model, X[:3], guide=global_guide, modules=[], k=4, progress=False)
    expected = dist.Bernoulli(logits=torch.tensor(0.3)).log_prob(X[:3]).sum(-1)  # log p(x | b) at b's point
    torch.testing.assert_close(ll, expected)


def test_compare_and_the_cli_refuse_a_point_mass_model_before_training(tmp_path, capsys):
    with pytest.raises(ValueError, match="compare ranks objectives by test log p\\(x\\), which needs a guide"):
        pvae.compare(lambda: pvae.AE(x_shape=(784,), latent_dim=2, hidden=(8,)), X, X[:4], objectives=["elbo"],
                     epochs=1, run_dir=tmp_path / "c", progress=False)
    assert not (tmp_path / "c" / "elbo").exists()
    run = tmp_path / "ae"
    assert main(["train", *TINY, "--model", "ae", "--run-dir", str(run)]) == 0
    for argv in (["eval", str(run), "--method", "ais", "--steps", "2", "--chains", "2", "--k", "2"],
                 ["bdmc", str(run), "--n", "2", "--steps", "2", "--chains", "2"]):
        assert main(argv + ["--quiet"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("pvae: error: ") and "point mass (Delta)" in err and len(err.strip().splitlines()) == 1
    assert not any(p.name.startswith("eval-") for p in run.iterdir())


# -- 5. checks come before the work ----------------------------------------------------------------------------
def labelled_program():
    net = torch.nn.Linear(784 + 1, 4)
    dec = torch.nn.Linear(2 + 1, 784)

    def model(x, y):
        pyro.module("dec", dec)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([x.shape[0], 2]).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=dec(torch.cat([z, y.unsqueeze(-1).expand(*z.shape[:-1], 1)], -1)))
                        .to_event(1), obs=x)

    def guide(x, y):
        pyro.module("enc", net)
        h = net(torch.cat([x, y.unsqueeze(-1)], -1))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(h[:, :2], h[:, 2:].exp()).to_event(1))

    return model, guide, torch.nn.ModuleList([net, dec])


def test_members_of_the_test_data_are_checked_before_training():
    model, guide, modules = labelled_program()
    y = torch.arange(12.0) % 2
    bad = y.clone()
    bad[3] = float("nan")
    fit = lambda test, **kw: pvae.fit(model, (X, y), guide=guide, modules=modules, epochs=50, test=test,  # noqa: E731
                                      progress=False, **kw)
    with pytest.raises(ValueError, match=r"data member 2 of the test data holds NaN or inf \(1 of 12 values\)"):
        fit((X, bad))
    with pytest.raises(ValueError, match="the model requires y, which the test data do not hold"):
        fit(X)
    import numpy as np
    with pytest.raises(TypeError, match="data member 2 holds <U1 values"):
        fit((X, np.array(list("ab") * 6)))
    h = pvae.fit(model, (X, y.double()), guide=guide, modules=modules, epochs=1, test=(X.double(), y.double()),
                 progress=False)  # float64 members are converted as x is
    assert h[-1]["test_elbo"] < 0


def test_ais_on_a_discrete_program_is_refused_before_importance_sampling_or_training(tmp_path):
    def model(x):
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Bernoulli(0.5 * torch.ones(x.shape[0])))
            pyro.sample("x", dist.Bernoulli(logits=c.unsqueeze(-1).expand(*c.shape, 784)).to_event(1), obs=x)

    def guide(x):
        p = pyro.param("p", torch.tensor(0.3), constraint=dist.constraints.unit_interval)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("c", dist.Bernoulli(p.expand(x.shape[0])))

    pyro.clear_param_store()
    with pytest.raises(ValueError, match="site 'c' of the program is discrete"):
        pvae.compare(lambda: pvae.infer.pair.as_pair(model, guide, []), X, X[:4], objectives=["elbo"], epochs=1,
                     eval_k=2, ais={"steps": 3, "chains": 2}, run_dir=tmp_path / "c", progress=False)
    assert not (tmp_path / "c" / "elbo").exists()
    pair = pvae.infer.pair.as_pair(model, guide, [])
    with pytest.raises(ValueError, match="site 'c' of the program is discrete"):
        pvae.report(pair, X[:4], tmp_path / "r", 3, ais={"steps": 3, "chains": 2, "leapfrog": 1})
    assert not (tmp_path / "r" / "results.json").exists()


# -- 9, 10. autoguides' joint latents; guide draws of observed values -----------------------------------------
def test_a_joint_autoguide_latent_is_refused_and_autonormal_converges_to_the_exact_log_px():
    from pyro.infer.autoguide import AutoDiagonalNormal, AutoNormal

    n, d, noise = 16, 4, 0.5
    torch.manual_seed(0)
    dec = torch.nn.Linear(2, d)
    x = torch.randn(n, d)

    def model(x):
        pyro.module("dec", dec)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([x.shape[0], 2]).to_event(1))
            pyro.sample("x", dist.Normal(dec(z), noise).to_event(1), obs=x)

    pyro.clear_param_store()
    joint = AutoDiagonalNormal(model)
    h = pvae.fit(model, x, guide=joint, modules=[dec, joint], epochs=2, batch_size=n, progress=False)
    with pytest.raises(ValueError, match=r"draws \['z'\] for all datapoints at once from one joint latent"):
        pvae.log_likelihood(h.model, x, k=10, batch_size=n, progress=False)
    with pytest.raises(ValueError, match="one joint latent"):
        pvae.log_likelihood(h.model, x, method="ais", steps=3, chains=2, batch_size=n, progress=False)

    pyro.clear_param_store()
    auto = AutoNormal(model)
    h = pvae.fit(model, x, guide=auto, modules=[dec, auto], epochs=300, batch_size=n, lr=0.05, progress=False)
    ll = pvae.log_likelihood(h.model, x, k=4000, batch_size=n, progress=False)
    w, b = dec.weight.detach(), dec.bias.detach()
    exact = dist.MultivariateNormal(b, w @ w.T + noise ** 2 * torch.eye(d)).log_prob(x)  # x = Wz + b + noise
    assert float((ll - exact).abs().mean()) < 0.05, (ll - exact)


def test_guide_draws_of_values_the_model_observes_are_said_and_not_weighted():
    net = torch.nn.Linear(784, 3)

    def model(x, y):
        pyro.module("net", net)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([x.shape[0], 1]).to_event(1))
            pyro.sample("y", dist.Bernoulli(logits=z.squeeze(-1)), obs=y)
            pyro.sample("x", dist.Bernoulli(logits=z.expand(*z.shape[:-1], 784)).to_event(1), obs=x)

    def guide(x, y):
        h = net(x)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("y", dist.Bernoulli(logits=h[:, 2]))  # drawn although the model observes it
            pyro.sample("z", dist.Normal(h[:, :1], h[:, 1:2].exp()).to_event(1))

    y = torch.arange(12.0) % 2
    with pytest.warns(UserWarning, match=r"the guide samples \['y'\], which the model observes"):
        h = pvae.fit(model, (X, y), guide=guide, modules=[net], epochs=1, progress=False)
    with pytest.raises(ValueError, match=r"the guide samples \['y'\], which the model observes"):
        pvae.log_likelihood(h.model, (X, y), k=5, progress=False)


# -- 12. --model files that will not give a program ------------------------------------------------------------
MODEL_FILES = {
    "syntax.py": ("def broken(:\n    pass\n", "X", "has a syntax error at line 1"),
    "missing.py": ("import notapackage_xyz_pvae\n", "X", "No module named 'notapackage_xyz_pvae' (install"),
    "argv.py": ("import argparse\np = argparse.ArgumentParser()\np.add_argument('--foo', required=True)\n"
                "p.parse_args()\n", "X", "ended the program (exit status 2: argv.py: error: the following arguments"),
    "instance.py": ("import pvae\nMODEL = pvae.VAE(x_shape=(784,), latent_dim=2, hidden=(8,))\n", "MODEL",
                    "VAE instance found; name its class"),
    "number.py": ("NUMBER = 3\n", "NUMBER", "is of type int, not a class or function"),
    "raising.py": ("class Raising:\n    def __init__(self):\n        raise RuntimeError('boom')\n", "Raising",
                   "its constructor raised RuntimeError: boom"),
    "needs_args.py": ("class Needs:\n    def __init__(self, size):\n        pass\n", "Needs",
                      "building it with no arguments failed"),
    "not_a_pair.py": ("import torch\nclass Plain(torch.nn.Linear):\n    def __init__(self):\n"
                      "        super().__init__(2, 2)\n", "Plain", "built a Plain"),
}


@pytest.mark.parametrize("name", sorted(MODEL_FILES))
def test_model_files_that_give_no_program_are_one_line_and_leave_nothing(name, tmp_path, capsys):
    source, attr, message = MODEL_FILES[name]
    (tmp_path / name).write_text(source)
    run = tmp_path / "run"
    assert main(["train", *TINY, "--model", f"{tmp_path / name}:{attr}", "--run-dir", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pvae: error: --model") and len(err.strip().splitlines()) == 1, err
    assert message in err, err
    assert not run.exists()


# -- 12. the rest of the unclear answers ------------------------------------------------------------------------
def test_no_standard_error_of_zero_from_one_datapoint_or_one_draw():
    m = pvae.VAE(x_shape=(784,), latent_dim=2, hidden=(8,))
    one = pvae.evaluate(m, X[:1], k=5, progress=False, khat=False)["summary"]
    assert one["log_px_se"] != one["log_px_se"] and any("one datapoint" in n for n in one["notes"])  # NaN
    draw = pvae.evaluate(m, X[:4], k=1, progress=False, khat=False)["summary"]
    assert draw["log_px_mc_se"] != draw["log_px_mc_se"] and draw["log_px_se"] > 0
    assert any("one draw" in n for n in draw["notes"])


def test_sizes_beyond_memory_name_the_option_before_any_allocation():
    m = pvae.VAE(x_shape=(784,), latent_dim=2, hidden=(8,))
    with pytest.raises(MemoryError, match=r"out of memory: AIS with 1000000000 chains .* lower chains \(1000000000\)"):
        pvae.log_likelihood(m, X[:2], method="ais", steps=2, chains=10 ** 9, progress=False)
    with pytest.raises(MemoryError, match=r"lower chains \(1000000000\) or n \(2\)"):
        pvae.bdmc(m, n=2, steps=2, chains=10 ** 9, progress=False)
    with pytest.raises(MemoryError, match=r"lower prior_components \(10000000000\)"):
        pvae.VAE(x_shape=(784,), latent_dim=2, hidden=(8,), prior="mog", prior_components=10 ** 10)


def test_samplers_and_ais_on_the_wrong_data_or_a_diverged_model_are_one_line():
    m = pvae.VAE(x_shape=(784,), latent_dim=2, hidden=(8,))
    with pytest.raises(ValueError, match="10 components needs at least 10 codes .* have 5 datapoints"):
        pvae.fit_sampler(m, X[:5], kind="gmm", components=10)
    with pytest.raises(ValueError, match=r"datapoints have shape \(100,\), and VAE takes \(784,\)"):
        pvae.fit_sampler(m, torch.rand(20, 100), kind="gmm", components=2)
    with torch.no_grad():
        for p in m.parameters():
            p.fill_(float("nan"))
    for call in (lambda: pvae.log_likelihood(m, X[:2], method="ais", steps=2, chains=2, progress=False),
                 lambda: pvae.bdmc(m, n=2, steps=2, chains=2, progress=False),
                 lambda: pvae.fit_sampler(m, X, kind="gmm", components=2)):
        with pytest.raises(FloatingPointError, match=r"invalid distribution parameter .* \(a diverged model\?\)") as e:
            call()
        assert "\n" not in str(e.value)
