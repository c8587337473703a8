"""Training through SVI: learning, bring-your-own model/guide pairs, local parameters, history,
checkpoints and resume."""

import json

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

import pvae
from linear_gaussian import PPCA


@pytest.fixture(scope="module")
def sample():
    train = pvae.load_dataset("fashion-mnist-sample", "train", binarize="static", n=2000)
    test = pvae.load_dataset("fashion-mnist-sample", "test", binarize="static", n=200)
    return train, test


def small_vae(seed=0, **kw):
    torch.manual_seed(seed)  # the same initial weights for every call
    return pvae.VAE(**{**dict(x_shape=(784,), latent_dim=8, hidden=(64,), activation="tanh"), **kw})


@pytest.mark.parametrize("objective, k", [("elbo", 1), ("mf-elbo", 1), ("iwae", 5)])
def test_training_improves_test_log_px(sample, objective, k):
    train, test = sample
    m = small_vae()
    before = float(pvae.log_likelihood(m, test, k=100, progress=False).mean())
    h = pvae.fit(m, train, objective=objective, k=k, epochs=4, batch_size=100, lr=3e-3, seed=0, test=test,
                 progress=False)
    after = float(pvae.log_likelihood(m, test, k=100, progress=False).mean())
    # an untrained Bernoulli decoder sits near -784 log 2 = -543 nats; 4 short epochs gain > 200
    assert after - before > 200, (before, after)
    assert h[-1]["test_elbo"] > h[0]["test_elbo"]
    assert [r["epoch"] for r in h] == [1, 2, 3, 4]
    assert all(r["seconds"] > 0 for r in h)


class UserPair(nn.Module):
    """A model/guide pair written here, not in pvae: a 1-D-latent VAE with a Gaussian decoder."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(6, 2)
        self.dec = nn.Linear(1, 6)

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 1), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(self.dec(z), 0.3).to_event(1), obs=x)

    def guide(self, x):
        loc, log_scale = self.enc(x).chunk(2, -1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))


def _user_data(n=600, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 1, generator=g)
    return z @ torch.tensor([[1.0, -2.0, 0.5, 1.5, 0.0, -1.0]]) + 0.3 * torch.randn(n, 6, generator=g)


def test_user_module_trains_and_evaluates():
    x, x_test = _user_data(), _user_data(200, seed=1)
    m = UserPair()
    before = float(pvae.log_likelihood(m, x_test, k=200, progress=False).mean())
    pvae.fit(m, x, epochs=30, batch_size=50, lr=2e-2, progress=False)
    after = float(pvae.log_likelihood(m, x_test, k=200, progress=False).mean())
    assert after - before > 5.0, (before, after)


def test_plain_functions_plus_modules_train():
    x = _user_data()
    enc, dec = nn.Linear(6, 2), nn.Linear(1, 6)

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 1), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(dec(z), 0.3).to_event(1), obs=x)

    def guide(x):
        loc, log_scale = enc(x).chunk(2, -1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))

    ll0 = float(pvae.log_likelihood(model, x, k=100, guide=guide, modules=[enc, dec], progress=False).mean())
    h = pvae.fit(model, x, guide=guide, modules=[enc, dec], objective="iwae", k=4, epochs=30, batch_size=50,
                 lr=2e-2, progress=False)
    ll1 = float(pvae.log_likelihood(model, x, k=100, guide=guide, modules=[enc, dec], progress=False).mean())
    assert ll1 - ll0 > 5.0
    assert h[-1]["train_loss"] < h[0]["train_loss"]


def test_a_pair_without_parameters_is_refused():
    m = PPCA()
    with pytest.raises(ValueError, match="no trainable parameters"):
        pvae.fit(m.model, torch.randn(10, 5), guide=m.guide, epochs=1, progress=False)


def test_two_models_never_share_parameters(sample):
    train, _ = sample
    a, b = small_vae(), small_vae()
    b_before = {k: v.clone() for k, v in b.state_dict().items()}
    pvae.fit(a, train.x[:300], epochs=1, progress=False)
    for k, v in b.state_dict().items():
        assert torch.equal(v, b_before[k]), k
    # Pyro's store holds a's parameters under a's own name only (pvae's pairs register as pyro.module does)
    store = pyro.get_param_store()
    assert all(key.startswith(a.pyro_name + "$$$") for key in store.keys())
    held = {id(p) for p in a.parameters()}
    assert all(id(store.get_param(key)) in held for key in store.keys())


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match=r"training data of shape \(10,\) per datapoint do not fit the model's x_shape \(784,\)"):
        pvae.fit(small_vae(), torch.rand(20, 10), epochs=1, progress=False)


def test_history_checkpoints_and_resume_bit_for_bit(sample, tmp_path):
    train, test = sample
    x = train.x[:500]
    straight = pvae.fit(small_vae(), x, epochs=2, seed=3, test=test, run_dir=tmp_path / "a", progress=False)
    pvae.fit(small_vae(), x, epochs=1, seed=3, test=test, run_dir=tmp_path / "b", progress=False)
    resumed = pvae.fit(small_vae(), x, epochs=2, seed=3, test=test, run_dir=tmp_path / "b",
                       resume=tmp_path / "b", progress=False)
    for (k, v), (_, w) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(v, w), k
    assert [r["train_loss"] for r in resumed] == [r["train_loss"] for r in straight]
    # files of the run
    files = {p.name for p in (tmp_path / "a").iterdir()}
    assert {"checkpoint.pt", "config.json", "history.json", "history.csv"} <= files
    assert not [f for f in files if ".tmp" in f]  # atomic writes leave no temporaries
    hist = json.loads((tmp_path / "a" / "history.json").read_text())
    assert [r["epoch"] for r in hist] == [1, 2] and "test_elbo" in hist[0]
    assert (tmp_path / "a" / "history.csv").read_text().splitlines()[0].startswith("epoch,train_loss")
    cfg = json.loads((tmp_path / "a" / "config.json").read_text())
    assert cfg["model"]["latent_dim"] == 8 and cfg["fit"]["epochs"] == 2
    # pvae.load rebuilds the model from the config and gives the same outputs
    loaded = pvae.load(tmp_path / "a")
    xb = x[:4].reshape(4, -1)
    torch.testing.assert_close(loaded.reconstruct(xb), straight.model.reconstruct(xb))


def test_checkpoint_of_a_user_model_needs_the_module(tmp_path):
    m = UserPair()
    pvae.fit(m, _user_data(100), epochs=1, run_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="holds a model of your own"):
        pvae.load(tmp_path)
    m2 = pvae.load(tmp_path, model=UserPair())
    torch.testing.assert_close(m2.enc.weight, m.enc.weight)


def test_kl_warmup_rises_linearly_to_one(sample):
    train, _ = sample
    h = pvae.fit(small_vae(), train.x[:400], epochs=4, batch_size=100, warmup_epochs=2, progress=False)
    # 4 steps an epoch: the scale after epoch e is min(1, 4e / 8)
    assert [r["kl_scale"] for r in h] == [0.5, 1.0, 1.0, 1.0]


def test_dynamic_binarization_draws_fresh_binary_batches():
    train = pvae.load_dataset("sample", "train", binarize="dynamic", n=300)
    assert not set(train.x.unique().tolist()) <= {0.0, 1.0}  # grey values kept ...
    ev = train.eval_x()
    assert set(ev.unique().tolist()) <= {0.0, 1.0}  # ... evaluation sees one fixed draw
    assert torch.equal(ev, train.eval_x())
    seen = []

    class Spy(UserPair):
        x_shape = (784,)  # a module that declares x_shape gets its data reshaped to it

        def __init__(self):
            super().__init__()
            self.enc, self.dec = nn.Linear(784, 2), nn.Linear(1, 784)

        def model(self, x):
            seen.append(x.clone())
            with pyro.plate("data", x.shape[0]):
                z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 1), 1.0).to_event(1))
                pyro.sample("x", dist.Bernoulli(logits=self.dec(z)).to_event(1), obs=x)

    pvae.fit(Spy(), train, epochs=2, batch_size=300, progress=False)
    batches = seen[-2:]  # the last step of each epoch
    assert all(set(b.unique().tolist()) <= {0.0, 1.0} for b in batches)
    assert not torch.equal(batches[0], batches[1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_training_and_evaluation(sample):
    train, test = sample
    m = small_vae()
    h = pvae.fit(m, train, epochs=1, device="cuda", test=test, progress=False)
    assert m.device.type == "cuda" and h[-1]["test_elbo"] > -600
    ll = pvae.log_likelihood(m, test, k=50, progress=False)
    assert ll.shape == (200,) and torch.isfinite(ll).all()


def test_cuda_request_without_a_device_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(ValueError, match="device 'cuda' was asked for but torch sees no CUDA device"):
        pvae.fit(small_vae(), torch.rand(10, 784), epochs=1, device="cuda", progress=False)
