"""Bad input, training faults and untrusted files: clear errors, nothing lost, nothing executed."""

import importlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

import pvae
from pvae.cli import main
from linear_gaussian import PPCA


def vae(**kw):
    torch.manual_seed(0)
    return pvae.VAE(**{**dict(x_shape=(784,), latent_dim=4, hidden=(16,)), **kw})


X = torch.rand(20, 784)
NAN = X.clone()
NAN[3, 5] = float("nan")
INF = X.clone()
INF[7, 0] = float("inf")

# (what, call, error type, message): every bad input pvae checks before training
API_CASES = [
    ("shape", lambda: pvae.fit(vae(), torch.rand(20, 10), epochs=1, progress=False), ValueError,
     r"training data of shape \(10,\) per datapoint do not fit the model's x_shape \(784,\)"),
    ("dtype", lambda: pvae.fit(vae(), X.to(torch.complex64), epochs=1, progress=False), TypeError,
     "data must be real numbers, got dtype torch.complex64"),
    ("nan", lambda: pvae.fit(vae(), NAN, epochs=1, progress=False), ValueError,
     r"training data contain 1 non-finite values \(NaN or inf\), the first in datapoint 3"),
    ("inf in test", lambda: pvae.fit(vae(), X, test=INF, epochs=1, progress=False), ValueError,
     "test data contain 1 non-finite values"),
    ("range bernoulli", lambda: pvae.fit(vae(), X * 255, epochs=1, progress=False), ValueError,
     r"training data lie in \[.*\], but the bernoulli likelihood needs values in \[0, 1\]"),
    ("range cont. bernoulli", lambda: pvae.fit(vae(likelihood="continuous-bernoulli"), X - 0.5, epochs=1,
                                               progress=False), ValueError,
     "the continuous-bernoulli likelihood needs values in"),
    ("range at evaluation", lambda: pvae.log_likelihood(vae(), X * 2, k=2, progress=False), ValueError,
     "evaluation data lie in"),
    ("empty", lambda: pvae.fit(vae(), torch.zeros(0, 784), epochs=1, progress=False), ValueError,
     "the dataset is empty"),
    ("label count", lambda: pvae.fit(vae(), X, labels=torch.arange(3), epochs=1, progress=False), ValueError,
     "3 labels for 20 datapoints"),
    ("latent size", lambda: vae(latent_dim=0), ValueError, "latent_dim must be a positive integer"),
    ("layer sizes", lambda: vae(hidden=(16, 0)), ValueError, "hidden must be a non-empty tuple of positive widths"),
    ("k", lambda: pvae.fit(vae(), X, objective="iwae", k=0, progress=False), ValueError,
     "k must be an integer >= 1"),
    ("alpha", lambda: pvae.objective("renyi", k=5, alpha=1), ValueError, "alpha = 1 is the ELBO's limit"),
    ("beta", lambda: vae(beta=-1.0), ValueError, "beta must be > 0"),
    ("ciwae beta", lambda: pvae.objective("ciwae:k=4,beta=2"), ValueError, r"beta must lie in \[0, 1\]"),
    ("objective name", lambda: pvae.fit(vae(), X, objective="vae", progress=False), ValueError,
     r"unknown objective 'vae'; choose one of \['ciwae', 'elbo'"),
    ("dataset name", lambda: pvae.load_dataset("cifar"), ValueError,
     r"unknown dataset 'cifar'; choose one of \['fashion-mnist-sample', 'fashion-mnist', 'mnist', 'binarized-mnist', 'shapes'\]"),
    ("epochs", lambda: pvae.fit(vae(), X, epochs=-1, progress=False), ValueError, "epochs must be an integer >= 0"),
    ("batch size", lambda: pvae.fit(vae(), X, batch_size=0, progress=False), ValueError,
     "batch_size must be an integer >= 1"),
    ("lr", lambda: pvae.fit(vae(), X, lr=0, progress=False), ValueError, "lr must be > 0"),
    ("clip", lambda: pvae.fit(vae(), X, clip_grad=-1, progress=False), ValueError, "clip_grad must be > 0"),
    ("fault mode", lambda: pvae.fit(vae(), X, on_nonfinite="ignore", progress=False), ValueError,
     "on_nonfinite must be 'stop' or 'skip'"),
    ("data type", lambda: pvae.fit(vae(), 42, progress=False), TypeError, "data must be a tensor"),
]


@pytest.mark.parametrize("what, call, error, message", API_CASES, ids=[c[0] for c in API_CASES])
def test_bad_input_through_the_api(what, call, error, message):
    with pytest.raises(error, match=message):
        call()


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    x = np.random.default_rng(0).random((30, 28, 28)).astype(np.float32)
    x_nan = x.copy()
    x_nan[2, 3, 4] = np.nan
    np.savez(d / "nan.npz", train_x=x_nan, test_x=x[:5])
    np.save(d / "big.npy", x * 255)
    (d / "run").mkdir()
    (d / "run" / "checkpoint.pt").write_bytes(b"PK\x03\x04 this is not a checkpoint")
    return d


CLI_CASES = [
    (["train", "--dataset", "imagenet"], "unknown dataset 'imagenet'"),
    (["train", "--n-train", "50", "--objective", "iwea"], "unknown objective 'iwea'"),
    (["train", "--n-train", "50", "--objective", "iwae:k=0"], "k must be an integer >= 1"),
    (["train", "--n-train", "50", "--objective", "renyi:k=5,alpha=1"], "alpha = 1"),
    (["train", "--n-train", "50", "--objective", "iwae:k=five"], "k='five' is not an integer"),
    (["train", "--n-train", "50", "--beta", "0"], "argument --beta: 0 is out of range (it must be > 0)"),
    (["train", "--n-train", "50", "--latent-dim", "0"], "argument --latent-dim: 0 is below the minimum 1"),
    (["train", "--n-train", "50", "--hidden", "0"], "argument --hidden: 0 is below the minimum 1"),
    (["train", "--n-train", "50", "--epochs", "-2"], "argument --epochs: -2 is below the minimum 0"),
    (["train", "--n-train", "50", "--batch-size", "0"], "argument --batch-size: 0 is below the minimum 1"),
    (["train", "--n-train", "50", "--net", "conv", "--dataset", "{d}/big.npy"], "training data lie in"),
    (["train", "--dataset", "{d}/nan.npz"], "training data contain 1 non-finite values"),
    (["train", "--dataset", "{d}/missing.npz"], "no such data file"),
    (["train", "--n-train", "50", "--device", "cuda"], "device 'cuda' was asked for"),
    (["eval", "{d}/run"], "cannot read checkpoint"),
    (["eval", "{d}/nowhere"], "no checkpoint at"),
    (["compare", "--n-train", "50", "--objectives", "elbo", "iwea"], "unknown objective 'iwea'"),
]


@pytest.mark.parametrize("argv, message", CLI_CASES, ids=[" ".join(c[0][:4]) for c in CLI_CASES])
def test_bad_input_through_the_cli(argv, message, bad_files, capsys):
    if "--device" in argv and torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    argv = [a.replace("{d}", str(bad_files)) for a in argv]
    try:
        rc = main(argv + ["--quiet"] if argv[0] != "eval" else argv)
    except SystemExit as e:  # refused by the parser: its usage line, then the error line
        rc = e.code
    assert rc == 2
    err = capsys.readouterr().err
    if "error: argument" in err:
        err = err.strip().splitlines()[-1]
    assert "error: " in err and message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_cli_bad_input_in_a_subprocess_has_no_traceback():
    r = subprocess.run([sys.executable, "-m", "pvae", "train", "--dataset", "nope"], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip() == "pvae: error: unknown dataset 'nope'; choose one of ['fashion-mnist-sample', " \
                               "'fashion-mnist', 'mnist', 'binarized-mnist', 'shapes'] or a .npy/.npz path"


class NaNAt(nn.Module):
    """A tiny Gaussian VAE whose model yields a NaN log-likelihood on chosen training calls."""

    def __init__(self, bad_calls=()):
        super().__init__()
        self.enc, self.dec = nn.Linear(6, 2), nn.Linear(1, 6)
        self.bad_calls, self.calls = set(bad_calls), 0

    def model(self, x):
        self.calls += torch.is_grad_enabled()  # pvae's no-grad looks at the program do not count
        scale = torch.tensor(float("nan")) if self.calls in self.bad_calls else torch.tensor(1.0)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 1), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(self.dec(z), scale, validate_args=False).to_event(1), obs=x)

    def guide(self, x):
        loc, log_scale = self.enc(x).chunk(2, -1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))


def test_nan_stops_training_naming_epoch_and_step_and_keeps_the_checkpoint(tmp_path):
    x = torch.randn(40, 6)
    # 4 steps an epoch; model call 1 is fit's parameter probe, so call 7 is epoch 2, step 2
    m = NaNAt(bad_calls={7})
    with pytest.raises(FloatingPointError, match=r"non-finite loss or gradient at epoch 2, step 2; "
                                                 r"the last good checkpoint \(epoch 1\) in .* is kept"):
        pvae.fit(m, x, epochs=3, batch_size=10, run_dir=tmp_path, progress=False)
    state = pvae.load_checkpoint(tmp_path)
    assert state["epoch"] == 1 and [r["epoch"] for r in state["history"]] == [1]
    assert all(torch.isfinite(v).all() for v in state["model_state"].values())
    assert all(torch.isfinite(p).all() for p in m.parameters())  # stopped before the bad step


def test_nan_can_be_skipped_with_a_lower_learning_rate(capsys):
    x = torch.randn(40, 6)
    m = NaNAt(bad_calls={3, 9})
    h = pvae.fit(m, x, epochs=3, batch_size=10, lr=1e-2, on_nonfinite="skip", progress=False)
    assert [r["epoch"] for r in h] == [1, 2, 3] and all(np.isfinite(r["train_loss"]) for r in h)
    assert all(torch.isfinite(p).all() for p in m.parameters())
    out = capsys.readouterr().out
    assert "epoch 1, step 2: non-finite loss or gradient, batch skipped, lr halved to 0.005" in out
    assert "lr halved to 0.0025" in out


def test_gradient_clipping_bounds_every_update(monkeypatch):
    norms = []
    real_step = torch.optim.Adam.step

    def spy(self, *a, **k):
        norms.append(float(torch.cat([p.grad.flatten() for g in self.param_groups for p in g["params"]]).norm()))
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.Adam, "step", spy)
    x = torch.randn(40, 6) * 3
    pvae.fit(NaNAt(), x, epochs=2, batch_size=10, progress=False)
    assert max(norms) > 1.0
    norms.clear()
    pvae.fit(NaNAt(), x, epochs=2, batch_size=10, clip_grad=0.1, progress=False)
    assert len(norms) == 8 and max(norms) <= 0.1 + 1e-5


SCRIPT = textwrap.dedent("""
    import sys, time, pathlib, torch
    torch.set_num_threads(1)
    import pvae
    run, marker = sys.argv[1], pathlib.Path(sys.argv[2])
    torch.manual_seed(0)
    m = pvae.VAE(x_shape=(784,), latent_dim=4, hidden=(16,))
    x = pvae.load_dataset("sample", "train", binarize="static", n=400).x
    steps = {"n": 0}
    orig = m.model
    def slow_model(*a, **k):
        steps["n"] += 1
        if steps["n"] > 1 + 2 * 4 + 2:   # epoch 3, step 2: tell the parent, then hang
            marker.touch()
            time.sleep(60)
        return orig(*a, **k)
    m.model = slow_model
    pvae.fit(m, x, epochs=4, batch_size=100, seed=5, run_dir=run, progress=False)
""")


def test_sigkill_mid_epoch_loses_at_most_that_epoch(tmp_path):
    script, marker, run = tmp_path / "train.py", tmp_path / "marker", tmp_path / "run"
    script.write_text(SCRIPT)
    p = subprocess.Popen([sys.executable, str(script), str(run), str(marker)])
    try:
        for _ in range(600):
            if marker.exists() or p.poll() is not None:
                break
            time.sleep(0.1)
        assert marker.exists(), "the training process never reached epoch 3"
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == -signal.SIGKILL
    state = pvae.load_checkpoint(run)  # intact, from the end of epoch 2
    assert state["epoch"] == 2 and not [f for f in os.listdir(run) if ".tmp" in f]
    # resume and finish; compare with an uninterrupted run (single thread, as the killed one)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        x = pvae.load_dataset("sample", "train", binarize="static", n=400).x
        torch.manual_seed(0)
        resumed = pvae.fit(pvae.VAE(x_shape=(784,), latent_dim=4, hidden=(16,)), x, epochs=4, batch_size=100,
                           seed=5, run_dir=run, resume=run, progress=False)
        torch.manual_seed(0)
        straight = pvae.fit(pvae.VAE(x_shape=(784,), latent_dim=4, hidden=(16,)), x, epochs=4, batch_size=100,
                            seed=5, progress=False)
    finally:
        torch.set_num_threads(threads)
    for (k, v), (_, w) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(v, w), k


@pytest.fixture
def checkpoint(tmp_path):
    pvae.fit(vae(), X, epochs=1, run_dir=tmp_path, progress=False)
    return tmp_path / "checkpoint.pt"


def test_truncated_checkpoint_is_a_clear_error(checkpoint):
    data = checkpoint.read_bytes()
    checkpoint.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=f"cannot read checkpoint {checkpoint}"):
        pvae.load(checkpoint)


def test_corrupted_checkpoint_is_a_clear_error(checkpoint):
    data = bytearray(checkpoint.read_bytes())
    for i in range(200, len(data), 97):
        data[i] ^= 0xFF
    checkpoint.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        pvae.load(checkpoint)


def test_wrong_format_version_is_a_clear_error(checkpoint):
    state = torch.load(checkpoint, weights_only=True)
    state["format_version"] = 99
    torch.save(state, checkpoint)
    with pytest.raises(ValueError, match="has checkpoint format 99, this pvae reads format 1"):
        pvae.load(checkpoint)


class Payload:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_a_checkpoint_that_would_run_code_is_refused(checkpoint, tmp_path):
    pwned = tmp_path / "pwned"
    state = torch.load(checkpoint, weights_only=True)
    state["config"] = Payload(pwned)
    torch.save(state, checkpoint)
    assert not pwned.exists()
    with pytest.raises(ValueError, match="cannot read checkpoint .*could run code when loaded.*refused") as e:
        pvae.load(checkpoint)
    assert not pwned.exists()  # nothing ran
    assert "weights_only" not in str(e.value)  # torch's advice to load unsafely never reaches a user


def test_checkpoint_writes_are_atomic(checkpoint, monkeypatch):
    before = checkpoint.read_bytes()
    ckpt = importlib.import_module("pvae.training.checkpoint")

    def crash(obj, f, *a, **k):
        Path(f).write_bytes(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        pvae.save_checkpoint(checkpoint, vae())
    assert checkpoint.read_bytes() == before  # the old checkpoint is untouched ...
    assert [p.name for p in checkpoint.parent.iterdir() if ".tmp" in p.name] == []  # ... and no debris


def test_evaluation_retries_smaller_chunks_when_out_of_memory(monkeypatch):
    ev = importlib.import_module("pvae.infer.importance")
    real = ev.log_weight_terms
    sizes = []

    def limited(*args, num_particles, **kwargs):
        sizes.append(num_particles)
        if num_particles > 64:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(*args, num_particles=num_particles, **kwargs)

    monkeypatch.setattr(ev, "log_weight_terms", limited)
    monkeypatch.setattr(ev, "PARTICLES_PER_PASS", 10 * 1000)  # all k = 1000 particles in the first try
    m = PPCA(x_dim=4, z_dim=1)
    m.set_guide()  # exact posterior: the estimate is exact whatever the chunking
    x = m.sample_x(10)
    ll = pvae.log_likelihood(m, x, k=1000, batch_size=10, progress=False)
    torch.testing.assert_close(ll, m.exact_log_px(x), atol=1e-4, rtol=1e-5)
    assert sizes[:4] == [1000, 500, 250, 125]  # halved after each failure ...
    assert sum(s for s in sizes if s <= 64) == 1000  # ... then all 1000 particles in chunks that fit
