"""Row identity (issue 29 class 8, issue 27 item 1): a guide with one parameter row per datapoint
(``pyro.param``s sized by the batch, an autoguide over local latents) keeps row i on datapoint i:
trained in one batch in a fixed order (equal to plain Pyro SVI fed the rows in order), refused in
one line where minibatches or held-out data would give its rows other datapoints."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoDiagonalNormal, AutoNormal

import pvae

N, D, STEPS = 24, 6, 4
X = torch.randn(N, 2, generator=torch.Generator().manual_seed(0)) @ torch.randn(2, D, generator=torch.Generator()
                                                                                 .manual_seed(1))


def program(kind, setup=True):
    torch.manual_seed(0)
    dec = torch.nn.Linear(2, D)

    def model(x):
        pyro.module("dec", dec)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([x.shape[0], 2]).to_event(1))
            pyro.sample("x", dist.Normal(dec(z), 0.5).to_event(1), obs=x)

    if kind == "params":
        def guide(x):
            loc = pyro.param("loc", lambda: torch.zeros(x.shape[0], 2))
            scale = pyro.param("scale", lambda: torch.ones(x.shape[0], 2), constraint=dist.constraints.positive)
            with pyro.plate("data", x.shape[0]):
                pyro.sample("z", dist.Normal(loc, scale).to_event(1))
    else:
        guide = {"autonormal": AutoNormal, "autodiagonal": AutoDiagonalNormal}[kind](model)
        if setup:
            guide(X)  # its prototype (a trace of the model) set up before either run, so both draw alike
    return model, guide, dec


def trained(kind):
    names = {"params": ["loc", "scale"]}.get(kind)
    store = pyro.get_param_store()
    return {n: store[n].detach().clone() for n in (names or [n for n in store.keys() if "$$$" not in n])}


@pytest.mark.parametrize("kind", ["params", "autonormal", "autodiagonal"])
def test_per_datapoint_rows_train_as_plain_svi_fed_the_rows_in_order(kind):
    pyro.clear_param_store()
    model, guide, dec = program(kind)
    pyro.set_rng_seed(3)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    for _ in range(STEPS):
        svi.step(X)
    svi_rows, svi_dec = trained(kind), [p.detach().clone() for p in dec.parameters()]

    pyro.clear_param_store()
    model, guide, dec = program(kind)
    h = pvae.fit(model, X, guide=guide, modules=[dec] + ([guide] if kind != "params" else []), epochs=STEPS,
                 batch_size=N, lr=1e-2, seed=3, progress=False, compile=False, validate=True)
    assert h.program.per_datapoint, "the per-datapoint rows are found"
    for name, value in svi_rows.items():
        fit_value = trained(kind).get(name) if kind == "params" else dict(guide.named_parameters()).get(
            name.split(".", 1)[1] if "." in name else name, None)
        if fit_value is not None:
            torch.testing.assert_close(fit_value, value, rtol=1e-4, atol=1e-5, msg=name)
    for a, b in zip(dec.parameters(), svi_dec):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert any("parameter row i" in n for n in h.notes)


@pytest.mark.parametrize("kind", ["params", "autonormal"])
def test_minibatches_and_held_out_data_are_refused_in_one_line(kind):
    def fresh():
        pyro.clear_param_store()
        model, guide, dec = program(kind, setup=False)
        return model, {"guide": guide, "modules": [dec] + ([guide] if kind != "params" else [])}

    model, kw = fresh()
    with pytest.raises(ValueError, match=r"one parameter row per datapoint .*batches of 8 of 24 .*batch_size >= 24"):
        pvae.fit(model, X, epochs=1, batch_size=8, progress=False, **kw)
    model, kw = fresh()
    with pytest.raises(ValueError, match="held-out data have no rows of their own"):
        pvae.fit(model, X, epochs=1, batch_size=N, test=X[:4], progress=False, **kw)
    model, kw = fresh()
    h = pvae.fit(model, X, epochs=1, batch_size=N, progress=False, **kw)
    with pytest.raises(ValueError, match="evaluation in batches of 10 of 24"):
        pvae.log_likelihood(h.model, X, k=4, batch_size=10, progress=False)
    assert pvae.log_likelihood(h.model, X, k=4, batch_size=N, progress=False).shape == (N,)


def test_an_amortized_guide_is_not_taken_for_per_datapoint_rows():
    m = pvae.VAE(x_shape=(D,), latent_dim=2, hidden=(8,), likelihood="gaussian")
    h = pvae.fit(m, X, epochs=1, batch_size=8, progress=False)
    assert not h.program.per_datapoint
