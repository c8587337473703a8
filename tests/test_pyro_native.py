"""pvae's own model/guide pairs are ordinary Pyro programs (issue 30): plain Pyro ``SVI`` with
``pyro.optim`` and Pyro's own ELBOs trains every variant exactly as ``pvae.fit`` does, two models
in one process never share parameters through the param store, and ``pvae.fit`` still trains
user programs that register nothing with Pyro."""

import gc

import pyro
import pytest
import torch
from pyro.infer import SVI, Predictive, Trace_ELBO, TraceEnum_ELBO

import pvae

SMALL = dict(x_shape=(64,))
VARIANTS = {
    "vae": (lambda: pvae.VAE(**SMALL, latent_dim=3, hidden=(8,)), "elbo", None),
    "vae-fullcov-vamp": (lambda: pvae.VAE(**SMALL, latent_dim=3, hidden=(8,), guide="fullcov", prior="vamp",
                                          prior_components=3), "elbo", None),
    "hierarchical": (lambda: pvae.HierarchicalVAE(**SMALL, latent_dims=(4, 2), hidden=((8,), (8,))), "elbo", None),
    "cvae": (lambda: pvae.ConditionalVAE(**SMALL, num_classes=3, latent_dim=3, hidden=(8,)), "elbo", 1),
    "structured": (lambda: pvae.StructuredCVAE(x_shape=(1, 8, 8), visible=1, latent_dim=3, hidden=(8,)), "elbo",
                   None),
    "m2": (lambda: pvae.SemiSupervisedVAE(**SMALL, num_classes=3, latent_dim=3, hidden=(8,)), "enum-elbo", 2),
    "gumbel": (lambda: pvae.GumbelSoftmaxVAE(**SMALL, num_vars=2, num_classes=3, hidden=(8,)), "elbo", None),
    "ae": (lambda: pvae.AE(**SMALL, latent_dim=3, hidden=(8,)), "elbo", None),
    "vqvae": (lambda: pvae.VQVAE(**SMALL, num_codes=4, code_dim=2, hidden=(8,), num_latents=2), "elbo", None),
}
STEPS, N = 4, 16


def _build(name):
    torch.manual_seed(1)
    return VARIANTS[name][0]()


def _data(name):
    """N copies of one datapoint: the order pvae.fit draws rows in then does not matter, so the
    two runs see the same batches and the same random draws."""
    row = (torch.rand(1, 64, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    x = row.repeat(N, 1)
    if name == "structured":
        x = x.reshape(N, 1, 8, 8)
    label = VARIANTS[name][2]
    return x, (None if label is None else torch.full((N,), label))


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_plain_pyro_svi_trains_every_variant_as_pvae_fit_does(name):
    x, y = _data(name)
    args = (x,) if y is None else (x, y)
    svi_model = _build(name)
    start = [p.detach().clone() for p in svi_model.parameters()]
    elbo = TraceEnum_ELBO(max_plate_nesting=1) if VARIANTS[name][1] == "enum-elbo" else Trace_ELBO()
    pyro.set_rng_seed(3)
    svi = SVI(svi_model.model, svi_model.guide, pyro.optim.Adam({"lr": 1e-2}), elbo)
    anneal = getattr(svi_model, "anneal", None)
    for step in range(STEPS):
        if anneal is not None:
            anneal(step)  # what pvae.fit does before every step
        svi.step(*args)

    fit_model = _build(name)
    pvae.fit(fit_model, x, labels=y, objective=VARIANTS[name][1], epochs=STEPS, batch_size=N, lr=1e-2, seed=3,
             progress=False, compile=False, validate=True)

    trained = [(n, p) for n, p in svi_model.named_parameters() if p.requires_grad]
    assert trained, "the variant has parameters"
    moved = sum(int(not torch.equal(p, p0)) for p, p0 in zip(svi_model.parameters(), start))
    assert moved >= len(trained) // 2, f"plain SVI moved {moved} of {len(trained)} parameters"
    for (n, a), b in zip(trained, [p for p in fit_model.parameters() if p.requires_grad]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=f"{name}: {n} differs")


def test_two_models_in_one_process_never_share_the_param_store():
    a, b = _build("vae"), _build("vae")  # the same initial weights, two instances
    assert a.pyro_name != b.pyro_name
    x, _ = _data("vae")
    for m in (a, b):
        svi = SVI(m.model, m.guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
        for _ in range(2):
            svi.step(x)
    fresh = _build("vae")
    for pa, pb, p0 in zip(a.parameters(), b.parameters(), fresh.parameters()):
        assert not torch.equal(pb, p0), "the second model was trained"
        assert pa is not pb
    store = pyro.get_param_store()
    assert store[f"{b.pyro_name}$$$decoder.net.0.weight"] is b.decoder.net[0].weight
    name = a.pyro_name
    del a, svi
    gc.collect()
    assert not any(k.startswith(name + "$$$") for k in store.keys()), "a collected model leaves the store"


def test_a_copy_gets_its_own_name():
    import copy

    m = _build("vae")
    assert copy.deepcopy(m).pyro_name != m.pyro_name


def test_predictive_and_poutine_see_the_parameters():
    m = _build("vae")
    x, _ = _data("vae")
    tr = pyro.poutine.trace(m.guide).get_trace(x)
    params = {n for n, s in tr.nodes.items() if s["type"] == "param"}
    assert params == {f"{m.pyro_name}$$${n}" for n, _ in m.named_parameters()}
    draws = Predictive(m.model, guide=m.guide, num_samples=3, return_sites=["z"])(x)
    assert draws["z"].shape == (3, N, 3)


def test_fit_still_trains_programs_that_register_nothing():
    import pyro.distributions as dist

    torch.manual_seed(0)
    enc, dec = torch.nn.Linear(64, 4), torch.nn.Linear(2, 64)

    def model(x):
        with pyro.plate("batch", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 2), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=dec(z)).to_event(1), obs=x)

    def guide(x):
        loc, log_scale = enc(x).chunk(2, -1)
        with pyro.plate("batch", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))

    x = (torch.rand(64, 64, generator=torch.Generator().manual_seed(0)) < 0.2).float()
    before = [p.detach().clone() for p in (*enc.parameters(), *dec.parameters())]
    h = pvae.fit(model, x, guide=guide, modules=[enc, dec], epochs=20, batch_size=32, lr=3e-2, progress=False,
                 compile=False)
    assert all(not torch.equal(p, p0) for p, p0 in zip((*enc.parameters(), *dec.parameters()), before))
    assert h[-1]["train_loss"] < h[0]["train_loss"] - 5, (h[0]["train_loss"], h[-1]["train_loss"])
    assert len(pyro.get_param_store().keys()) == 0


def _named_program():
    """Pyro's examples/vae style: pyro.module under fixed names ("encoder", "decoder") and a
    pyro.param of the program's own."""
    import pyro.distributions as dist

    class Named(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.enc, self.dec = torch.nn.Linear(64, 4), torch.nn.Linear(2, 64)

        def model(self, x):
            pyro.module("decoder", self.dec)
            shift = pyro.param("shift", torch.zeros(()))
            with pyro.plate("batch", x.shape[0]):
                z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 2), 1.0).to_event(1))
                pyro.sample("x", dist.Bernoulli(logits=self.dec(z) + shift).to_event(1), obs=x)

        def guide(self, x):
            pyro.module("encoder", self.enc)
            loc, log_scale = self.enc(x).chunk(2, -1)
            with pyro.plate("batch", x.shape[0]):
                pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))

    return Named()


def test_two_fits_of_modules_under_the_same_pyro_names_each_train_their_own():
    """Pyro's store would hand the second module the first one's tensors (pyro.module by name);
    each fit works in a store of its own that keeps the user's pyro.param values."""
    x = (torch.rand(64, 64, generator=torch.Generator().manual_seed(0)) < 0.2).float()
    torch.manual_seed(0)
    first, second = _named_program(), _named_program()
    pvae.fit(first, x, epochs=2, batch_size=32, lr=1e-2, progress=False)
    before = [p.detach().clone() for p in second.parameters()]
    pyro.param("shift").data.fill_(-1.0)  # the user's value: where the second run starts
    pvae.fit(second, x, epochs=3, batch_size=32, lr=1e-2, progress=False, compile=False)
    assert all(not torch.equal(p, p0) for p, p0 in zip(second.parameters(), before)), "the second module trained"
    store = pyro.get_param_store()
    assert store["decoder$$$weight"] is second.dec.weight  # the store now holds what the second run trained
    assert -1.2 < float(store["shift"]) < -0.8 and float(store["shift"]) != -1.0  # trained from the user's value


def test_the_second_fit_of_a_pyro_module_program_still_compiles():
    import warnings

    from programs import ExampleVAE as PyroExampleVAE

    x = (torch.rand(64, 784, generator=torch.Generator().manual_seed(0)) < 0.2).float()
    pvae.fit(PyroExampleVAE(x_dim=784, z_dim=4, hidden=16), x, epochs=1, batch_size=32, progress=False, compile=False)
    with warnings.catch_warnings():  # no pyro.clear_param_store() in between, as a user would write it
        warnings.simplefilter("error", UserWarning)  # 'the step stays eager: ... param store' would be one
        pvae.fit(PyroExampleVAE(x_dim=784, z_dim=4, hidden=16), x, epochs=1, batch_size=32, progress=False,
                 compile="step")


def test_analysis_leaves_batchnorm_statistics_as_plain_svi_moves_them():
    """pvae's analysis passes before training (tracing, checks, the untrained-leaf check) run the
    nets in train mode; their buffers and the random state are put back, so after N steps the
    running statistics and batch counts are those of N plain-SVI steps on the same batches."""
    from programs import BatchNormVAE

    n, steps = 16, 3
    x = (torch.rand(n, 784, generator=torch.Generator().manual_seed(0)) < 0.3).float()

    def build():
        torch.manual_seed(1)
        m = BatchNormVAE()
        for net in (m.enc, m.dec):  # no bias before BatchNorm: its gradient is 0 and Adam would amplify noise
            net[0].bias = None
        return m

    svi_model = build()
    pyro.clear_param_store()
    pyro.set_rng_seed(3)
    svi = SVI(svi_model.model, svi_model.guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    order = torch.Generator().manual_seed(3)  # the batches pvae.fit draws with seed=3, for plain SVI
    for _ in range(steps):
        svi.step(x[torch.randperm(n, generator=order)])
    fit_model = build()
    pvae.fit(fit_model, x, epochs=steps, batch_size=n, lr=1e-2, seed=3, progress=False, compile=False)
    for (name, a), b in zip(svi_model.named_buffers(), fit_model.buffers()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6, msg=name)  # num_batches_tracked: 3, not 8
    for (name, a), b in zip(svi_model.named_parameters(), fit_model.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=name)
    kept = {name: b.clone() for name, b in fit_model.named_buffers()}
    fit_model.train()
    pvae.evaluate(fit_model, x, k=4, progress=False)  # IS, active units and posterior means: nets in eval mode
    pvae.log_likelihood(fit_model, x, method="ais", steps=3, chains=2, progress=False)
    assert fit_model.training, "the user's training mode is given back"
    for name, b in fit_model.named_buffers():
        assert torch.equal(b, kept[name]), f"evaluation moved {name}"
