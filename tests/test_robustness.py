"""Nothing lost, nothing silent: the classes of issue 16, one section each.

1. results survive a failing figure or guide; 2. run folders are never clobbered; 3. seeds make a
CLI run reproducible; 4. a non-finite model is never saved as good; 6. resume refuses conflicts;
7. data are never read wrongly; then bad values, bad files and file-system faults as one line,
and the first-hour rough edges. (Class 5, user pairs with missing or extra sites, lives in
tests/test_user_programs.py.)
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import pvae
from pvae.cli import main

TINY = ["--n-train", "120", "--n-test", "20", "--epochs", "1", "--hidden", "8", "--latent-dim", "2", "--eval-k", "0",
        "--quiet", "--binarize", "static"]
X = torch.rand(30, 784)


def vae(**kw):
    torch.manual_seed(0)
    return pvae.VAE(**{**dict(x_shape=(784,), latent_dim=2, hidden=(8,)), **kw})


def one_line_error(capsys, *parts):
    err = capsys.readouterr().err
    assert err.startswith("pvae: error: ") and len(err.strip().splitlines()) == 1, err
    for part in parts:
        assert part in err, err
    return err


# -- 1. results are written first, and a figure or an odd guide costs nothing else ---------------
def test_iaf_run_evaluates_applies_and_samples(tmp_path, capsys):
    run = tmp_path / "iaf"
    assert main(["train", *TINY[:-5], "--guide", "iaf", "--eval-k", "5", "--run-dir", str(run), "--quiet"]) == 0
    assert {"results.json", "summary.md", "latent_space.png", "traversal.png"} <= {p.name for p in run.iterdir()}
    assert main(["eval", str(run), "--k", "5", "--quiet"]) == 0
    assert main(["apply", str(run), "--task", "denoise", "--quiet"]) == 0
    assert json.loads((run / "denoise.json").read_text())["mse"] >= 0


def test_one_test_datapoint_still_writes_the_report(tmp_path):
    run = tmp_path / "one"
    assert main(["train", *TINY[:-5], "--n-test", "1", "--eval-k", "5", "--run-dir", str(run), "--quiet"]) == 0
    assert json.loads((run / "results.json").read_text())["n"] == 1


# -- 2. run folders ----------------------------------------------------------------------------------
def test_default_run_folders_are_fresh_and_the_smoke_demo_has_its_own(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", *TINY]) == 0
    assert main(["train", *TINY]) == 0
    assert main(["demo", "--smoke", "--quiet", "--eval-k", "0"]) == 0
    names = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert len([n for n in names if n.startswith("train-")]) == 2, names
    assert len([n for n in names if n.startswith("demo-smoke-")]) == 1, names


def test_a_finished_run_is_refused_then_replaced_with_overwrite(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY[:-5], "--eval-k", "5", "--run-dir", str(run), "--quiet"]) == 0
    before = (run / "checkpoint.pt").read_bytes()
    assert (run / "samples.png").exists()
    (run / "notes.txt").write_text("mine")
    assert main(["train", *TINY, "--seed", "1", "--run-dir", str(run)]) == 2
    one_line_error(capsys, "already holds a run", "--overwrite", "--resume")
    assert (run / "checkpoint.pt").read_bytes() == before
    assert main(["train", *TINY, "--seed", "1", "--run-dir", str(run), "--overwrite"]) == 0
    assert (run / "checkpoint.pt").read_bytes() != before
    assert not (run / "samples.png").exists()  # the old run's figures do not linger beside the new run
    assert (run / "notes.txt").read_text() == "mine"  # files pvae did not write are kept


def test_a_folder_in_use_by_a_live_process_is_refused_and_a_stale_lock_taken_over(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / ".pvae.lock").write_text(str(sleeper.pid))
        assert main(["train", *TINY, "--run-dir", str(run)]) == 2
        one_line_error(capsys, "in use by another pvae process", f"pid {sleeper.pid}")
    finally:
        sleeper.kill()
        sleeper.wait()
    assert main(["train", *TINY, "--run-dir", str(run)]) == 0  # its owner is gone: the lock is stale
    assert not (run / ".pvae.lock").exists()


def test_two_trainings_into_one_folder_at_once_one_is_refused(tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "pvae", "train", *TINY[:5], "3", *TINY[6:], "--run-dir", str(run)]
    procs = [subprocess.Popen(cmd + ["--seed", str(s)], stderr=subprocess.PIPE, text=True) for s in (1, 2)]
    outs = [(p.wait(), p.stderr.read()) for p in procs]
    codes = sorted(rc for rc, _ in outs)
    assert codes == [0, 2], outs
    loser = next(err for rc, err in outs if rc == 2)
    assert "in use by another pvae process" in loser or "already holds a run" in loser
    winner_seed = next(s for (rc, _), s in zip(outs, (1, 2)) if rc == 0)
    state = pvae.load_checkpoint(run)
    assert state["fit_config"]["seed"] == winner_seed
    assert json.loads((run / "config.json").read_text())["fit"]["seed"] == winner_seed


def test_eval_and_sample_never_overwrite_the_training_results(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY[:-5], "--eval-k", "5", "--run-dir", str(run), "--quiet"]) == 0
    results, samples = (run / "results.json").read_text(), (run / "samples.png").read_bytes()
    assert main(["eval", str(run), "--k", "7", "--quiet"]) == 0
    assert (run / "results.json").read_text() == results
    assert json.loads((run / "eval-is-k7-seed0" / "results.json").read_text())["k"] == 7
    assert main(["eval", str(run), "--k", "7", "--quiet"]) == 2  # the same evaluation again: said, not clobbered
    one_line_error(capsys, "already holds a run")
    assert main(["sample", str(run), "--n", "4"]) == 0
    assert (run / "samples.png").read_bytes() == samples and (run / "samples-n4-seed0.png").exists()


@pytest.mark.parametrize("where, message", [("", "must name a folder"), ("afile", "is a file, not a folder"),
                                            ("afile/sub", "a part of that path is a file")])
def test_run_folder_names_that_cannot_be_used(where, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Path("afile").write_text("x")
    assert main(["train", *TINY, "--run-dir", where]) == 2
    one_line_error(capsys, message)
    assert Path("afile").read_text() == "x"


def test_a_read_only_run_folder_is_one_line(tmp_path, monkeypatch, capsys):
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **k: False if str(p).endswith("ro") else real(p, mode, **k))
    assert main(["train", *TINY, "--run-dir", str(tmp_path / "ro")]) == 2
    one_line_error(capsys, "cannot write to run folder", "read-only")


# -- 3. seeds ------------------------------------------------------------------------------------------
def test_the_same_command_twice_gives_the_same_weights(tmp_path):
    for name in ("a", "b"):
        assert main(["train", *TINY, "--seed", "3", "--run-dir", str(tmp_path / name)]) == 0
    a, b = (pvae.load_checkpoint(tmp_path / n)["model_state"] for n in ("a", "b"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert main(["train", *TINY, "--seed", "4", "--run-dir", str(tmp_path / "c")]) == 0
    c = pvae.load_checkpoint(tmp_path / "c")["model_state"]
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_a_resumed_cli_run_is_the_uninterrupted_run(tmp_path):
    once = ["train", *TINY, "--binarize", "dynamic"]  # --epochs 1
    thrice = ["train", *TINY[:5], "3", *TINY[6:], "--binarize", "dynamic"]
    assert main([*thrice, "--run-dir", str(tmp_path / "whole")]) == 0
    assert main([*once, "--run-dir", str(tmp_path / "parts")]) == 0
    assert main(["train", "--resume", str(tmp_path / "parts"), "--epochs", "3", "--quiet", "--eval-k", "0"]) == 0
    a, b = (pvae.load_checkpoint(tmp_path / n) for n in ("whole", "parts"))
    assert b["epoch"] == 3 and all(torch.equal(a["model_state"][k], b["model_state"][k]) for k in a["model_state"])


# -- 4. a non-finite model is never saved as the last good one -------------------------------------------
def _nan_after(monkeypatch, calls: int):
    """Adam steps that turn the parameters NaN from step ``calls`` on (a finite gradient times a
    bad step size)."""
    real, count = torch.optim.Adam.step, {"n": 0}

    def step(self, *a, **k):
        out = real(self, *a, **k)
        count["n"] += 1
        if count["n"] >= calls:
            with torch.no_grad():
                for g in self.param_groups:
                    for p in g["params"]:
                        p.fill_(float("nan"))
        return out
    monkeypatch.setattr(torch.optim.Adam, "step", step)


def test_parameters_that_turn_non_finite_are_never_checkpointed(tmp_path, monkeypatch):
    _nan_after(monkeypatch, 6)  # 3 steps an epoch: the last step of epoch 2
    with pytest.raises(FloatingPointError, match=r"parameters became non-finite during epoch 2 .*the last good "
                                                 r"checkpoint \(epoch 1\) in .* is kept"):
        pvae.fit(vae(), X, epochs=4, batch_size=10, run_dir=tmp_path / "r", progress=False, test=X[:5])
    state = pvae.load_checkpoint(tmp_path / "r")
    assert state["epoch"] == 1 and all(torch.isfinite(v).all() for v in state["model_state"].values())


def test_the_fault_message_says_what_is_true_of_the_checkpoints(tmp_path, monkeypatch):
    _nan_after(monkeypatch, 1)
    with pytest.raises(FloatingPointError, match=r"no checkpoint was written \(run_dir=None\)"):
        pvae.fit(vae(), X, epochs=2, batch_size=10, progress=False)
    with pytest.raises(FloatingPointError, match=r"no epoch finished, so .* holds no checkpoint"):
        pvae.fit(vae(), X, epochs=2, batch_size=10, run_dir=tmp_path / "r", progress=False)
    assert not (tmp_path / "r" / "checkpoint.pt").exists()


def test_an_infinite_learning_rate_is_refused(capsys):
    with pytest.raises(ValueError, match="lr must be a finite number, got inf"):
        pvae.fit(vae(), X, lr=float("inf"), progress=False)
    with pytest.raises(SystemExit):
        main(["train", *TINY, "--lr", "inf"])
    assert "--lr: inf is not a finite number" in capsys.readouterr().err


# -- 6. resume ------------------------------------------------------------------------------------------------
def test_resume_refuses_a_conflicting_option_and_keeps_the_runs_settings(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--lr", "0.002", "--run-dir", str(run)]) == 0
    for option, value in (("--lr", "0.5"), ("--latent-dim", "3"), ("--likelihood", "gaussian"), ("--model", "ae"),
                          ("--batch-size", "7"), ("--n-train", "60")):
        assert main(["train", "--resume", str(run), "--epochs", "2", option, value, "--quiet"]) == 2
        one_line_error(capsys, f"{option} {value} conflicts with the run in {run}")
    assert main(["train", "--resume", str(run), "--epochs", "2", "--quiet", "--eval-k", "0"]) == 0
    config = json.loads((run / "config.json").read_text())["fit"]
    assert config["lr"] == 0.002 and config["n_train"] == 120
    state = pvae.load_checkpoint(run)
    assert state["epoch"] == 2 and state["optimizer_state"]["param_groups"][0]["lr"] == 0.002


def test_resume_through_the_api_checks_settings_epochs_and_sizes(tmp_path):
    pvae.fit(vae(), X, epochs=1, batch_size=10, run_dir=tmp_path / "r", progress=False)
    with pytest.raises(ValueError, match=r"resume: lr=0.5 differs from the run's lr=0.001"):
        pvae.fit(vae(), X, epochs=2, batch_size=10, lr=0.5, resume=tmp_path / "r", progress=False)
    with pytest.raises(ValueError, match="has already trained 1 epochs; pass epochs > 1"):
        pvae.fit(vae(), X, epochs=1, batch_size=10, resume=tmp_path / "r", progress=False)
    with pytest.raises(ValueError, match=r"does not fit this model: encoder.* has shape \(8, 784\) there and "
                                         r"\(5, 784\) here"):
        pvae.fit(vae(hidden=(5,)), X, epochs=2, batch_size=10, resume=tmp_path / "r", progress=False)
    with pytest.raises(ValueError, match="resume must name a run folder or checkpoint"):
        pvae.fit(vae(), X, epochs=2, resume="", progress=False)


# -- 7. data are never read wrongly ---------------------------------------------------------------------------
def test_bad_data_files_and_labels_are_refused(tmp_path, capsys):
    np.save(tmp_path / "flat.npy", np.random.rand(784).astype("float32"))
    np.save(tmp_path / "scalar.npy", np.array(3.0))
    x = (np.random.rand(20, 784) > 0.5).astype("float32")
    np.savez(tmp_path / "halves.npz", x=x, y=np.array([0.5, 1.5] * 10))
    np.savez(tmp_path / "nanlabel.npz", x=x, y=np.array([np.nan] + [1.0] * 19))
    (tmp_path / "garbage.npz").write_bytes(b"not an archive" * 8)
    (tmp_path / "garbage.npy").write_bytes(b"\x93NUMPY garbage" * 8)
    for name, message in [("flat.npy", "a 1-D array of 784 values"), ("scalar.npy", "a single number"),
                          ("halves.npz", "must be integers, got 0.5 (pvae never rounds labels)"),
                          ("nanlabel.npz", "contain NaN or inf"), ("garbage.npz", "not a NumPy .npz array file"),
                          ("garbage.npy", "not a NumPy .npy array file")]:
        assert main(["train", *TINY, "--dataset", str(tmp_path / name), "--run-dir", str(tmp_path / "r")]) == 2
        err = one_line_error(capsys, message)
        assert "allow_pickle" not in err
    assert not (tmp_path / "r" / "checkpoint.pt").exists()


def test_labels_are_checked_not_truncated_or_ignored():
    cvae = pvae.ConditionalVAE(x_shape=(784,), num_classes=3, latent_dim=2, hidden=(8,))
    with pytest.raises(ValueError, match="one-hot labels .* must be rows of 0s with a single 1; row 0 is"):
        pvae.fit(cvae, X, labels=torch.full((30, 3), 7.0), epochs=1, progress=False)
    with pytest.raises(ValueError, match="labels of the training data must be integers"):
        pvae.fit(cvae, X, labels=torch.tensor([0.5, 1.5, 1.0] * 10), epochs=1, progress=False)
    with pytest.raises(ValueError, match="labels= were given, but VAE takes no labels"):
        pvae.fit(vae(), X, labels=torch.zeros(30, dtype=torch.long), epochs=1, progress=False)


def test_non_positive_counts_never_mean_all_but(capsys):
    for option, value in (("--n-train", "-5"), ("--n-train", "0"), ("--n-test", "0"), ("--eval-k", "-1")):
        with pytest.raises(SystemExit) as e:
            main(["train", *TINY, option, value])
        assert e.value.code == 2 and f"argument {option}: {value} is below the minimum" in capsys.readouterr().err
    with pytest.raises(ValueError, match="n .* must be an integer >= 1, got -5"):
        pvae.load_dataset("fashion-mnist-sample", "train", n=-5)


def test_a_nan_log_likelihood_is_an_error_not_a_number():
    m = vae()
    with torch.no_grad():
        m.decoder.net[-1].bias.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match=r"log p\(x\) is NaN for 30 of 30 datapoints"):
        pvae.log_likelihood(m, X, k=3, progress=False)
    with torch.no_grad():
        next(m.encoder.parameters()).fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="invalid distribution parameter"):
        pvae.evaluate(m, X, k=3, progress=False)


def test_results_json_holds_null_not_infinity_and_says_why(tmp_path, monkeypatch):
    module = sys.modules["pvae.analysis.evaluation"]
    real = module.evaluate

    def with_inf(*a, **k):
        out = real(*a, **k)
        out["summary"]["khat_max"] = float("inf")
        return out
    monkeypatch.setattr(module, "evaluate", with_inf)
    m = vae()
    s = pvae.report(m, pvae.Data(X[:10]), tmp_path / "r", k=5, progress=False)
    text = (tmp_path / "r" / "results.json").read_text()
    assert "Infinity" not in text and json.loads(text)["khat_max"] is None
    assert any("khat_max is inf" in n for n in s["notes"])
    assert "| PSIS k-hat, max | n/a |" in (tmp_path / "r" / "summary.md").read_text()


# -- bad values: one ValueError/TypeError naming the argument -------------------------------------------------
API_CASES = [
    ("epochs inf", lambda: pvae.fit(vae(), X, epochs=float("inf"), progress=False), ValueError,
     "epochs must be an integer >= 0, got inf"),
    ("epochs nan", lambda: pvae.fit(vae(), X, epochs=float("nan"), progress=False), ValueError,
     "epochs must be an integer >= 0, got nan"),
    ("lr string", lambda: pvae.fit(vae(), X, lr="0.01", progress=False), TypeError, "lr must be a number, got str"),
    ("objective int", lambda: pvae.fit(vae(), X, objective=42, progress=False), TypeError,
     "objective must be a name such as 'elbo'"),
    ("hidden float", lambda: vae(hidden=(16.7,)), ValueError, r"hidden must be .* \(integers\), got \(16.7,\)"),
    ("x_shape int", lambda: vae(x_shape=784), TypeError, "x_shape must be a tuple of sizes such as"),
    ("beta inf", lambda: vae(beta=float("inf")), ValueError, "beta must be a finite number, got inf"),
    ("alpha nan", lambda: pvae.objective("renyi", k=5, alpha=float("nan")), ValueError,
     "alpha must be a finite number, got nan"),
    ("warm-up inf", lambda: pvae.fit(vae(), X, warmup_epochs=float("inf"), progress=False), ValueError,
     "warmup_epochs must be a finite number"),
    ("miwae M=0", lambda: pvae.objective("miwae:k=10,M=0"), ValueError, r"M \(the number of groups\) must be an "
                                                                       "integer >= 1, got 0"),
    ("iwae k=5.5", lambda: pvae.objective("iwae:k=5.5"), ValueError, "k='5.5' is not an integer"),
    ("device", lambda: pvae.fit(vae(), X, device="banana", progress=False), ValueError,
     "device 'banana' is not a torch device"),
    ("seed", lambda: pvae.fit(vae(), X, seed=-1, progress=False), ValueError, "seed must be an integer >= 0"),
    ("eval_k", lambda: pvae.fit(vae(), X, eval_k=0, progress=False), ValueError, "eval_k must be an integer >= 1"),
    # evaluation and analysis (issue 27's sweep): each names the argument, none runs with a bad one
    ("eval batch 0", lambda: pvae.log_likelihood(vae(), X, k=2, batch_size=0, progress=False), ValueError,
     "batch_size must be an integer >= 1, got 0"),
    ("eval device", lambda: pvae.evaluate(vae(), X, k=2, device="gpu9", progress=False), ValueError,
     "device 'gpu9' is not a torch device"),
    ("ais batch 0", lambda: pvae.log_likelihood(vae(), X, method="ais", steps=3, batch_size=0, progress=False),
     ValueError, "batch_size must be an integer >= 1"),
    ("with_se 'yes'", lambda: pvae.log_likelihood(vae(), X, k=2, with_se="yes", progress=False), TypeError,
     "with_se must be True or False, got 'yes'"),
    ("compile 'fast'", lambda: pvae.log_likelihood(vae(), X, k=2, compile="fast", progress=False), TypeError,
     r"compile must be True or False \(or None\), got 'fast'"),
    ("khat 'no'", lambda: pvae.evaluate(vae(), X, k=2, khat="no", progress=False), TypeError,
     "khat must be True or False, got 'no'"),
    ("bdmc seed", lambda: pvae.bdmc(vae(), n=2, steps=3, seed=-1, progress=False), ValueError,
     "seed must be an integer >= 0, got -1"),
    ("threshold", lambda: pvae.active_units(vae(), X, threshold=-1), ValueError, "threshold must be >= 0, got -1"),
    ("num_samples", lambda: pvae.posterior_means(vae(), X, num_samples=0), ValueError,
     "num_samples must be an integer >= 2, got 0"),
    ("aggregate_kl n", lambda: pvae.aggregate_kl(vae(), X, n=0), ValueError, r"n \(datapoints\) must be an integer >= 2"),
    ("auroc nan", lambda: pvae.auroc(torch.tensor([0.1, float("nan"), 0.3]), torch.tensor([0, 1, 0])), ValueError,
     "scores hold 1 non-finite values .* the first at 1"),
    ("inpaint mask shape", lambda: pvae.inpaint(vae(), X[:3], torch.ones(3, 5, dtype=torch.bool), k=5), ValueError,
     r"observed must be a mask of x's shape \(3, 784\), got \(3, 5\)"),
    ("inpaint mask values", lambda: pvae.inpaint(vae(), X[:3], torch.full((3, 784), 0.5), k=5), ValueError,
     "observed must be a boolean mask"),
    ("inpaint k", lambda: pvae.inpaint(vae(), X[:3], torch.ones(3, 784, dtype=torch.bool), k=0), ValueError,
     "k must be an integer >= 1, got 0"),
    ("mig bins", lambda: pvae.analysis.disentangle.mig_score(torch.rand(9, 2), torch.zeros(9, 1), bins=1), ValueError,
     "bins must be an integer >= 2"),
    ("psis shape", lambda: pvae.psis_khat(torch.zeros(2, 3, 4)), ValueError, r"log-weights of shape \(k, n\) or \(k,\)"),
    ("Data y", lambda: pvae.Data(X, y=torch.zeros(3)), ValueError, "Data has 30 datapoints but 3 labels"),
    ("Data binarize", lambda: pvae.Data(X, binarize="round"), ValueError, "unknown binarization 'round'"),
    ("Data 1-d", lambda: pvae.Data(torch.rand(10)), ValueError,
     r"Data's x must be a tensor or array with a leading datapoint dim, shape \(n, \*x_shape\); got shape \(10,\)"),
    ("Data list", lambda: pvae.Data([1, 2, 3]), TypeError, "Data's x must be a tensor or array"),
    ("save to a folder", lambda: pvae.save_checkpoint(Path(__file__).parent, vae()), IsADirectoryError,
     "is a folder: name the checkpoint file"),
    ("save a non-module", lambda: pvae.save_checkpoint("never.pt", 42), TypeError,
     "save_checkpoint saves a torch module"),
    ("callback", lambda: pvae.fit(vae(), X, callbacks=[42], progress=False), TypeError,
     r"callbacks\[0\] is a int, not a callable"),
    ("scheduler value", lambda: pvae.fit(vae(), X, scheduler="step", scheduler_args={"gamma": "x"}, progress=False),
     TypeError, "scheduler StepLR with step_size=3, gamma='x': can't multiply"),
    ("compare none", lambda: pvae.compare(vae, X, X, objectives=(), progress=False), ValueError,
     "compare needs at least one objective"),
    ("compare twice", lambda: pvae.compare(vae, X, X, objectives=("elbo", "elbo"), progress=False), ValueError,
     "name the same objective twice"),
    ("compare ais option", lambda: pvae.compare(vae, X, X, ais={"stepz": 5}, progress=False), ValueError,
     "unknown AIS option 'stepz'"),
    ("compare ais start", lambda: pvae.compare(vae, X, X, ais={"start": "posterior"}, progress=False), ValueError,
     "start must be 'guide' or 'prior', got 'posterior'"),
]


@pytest.mark.parametrize("what, call, error, message", API_CASES, ids=[c[0] for c in API_CASES])
def test_bad_values_through_the_api(what, call, error, message):
    with pytest.raises(error, match=message) as e:
        call()
    assert "\n" not in str(e.value)


CLI_CASES = [
    (["train", *TINY, "--device", "banana"], "device 'banana' is not a torch device"),
    (["train", *TINY, "--objective", "miwae:k=10,M=0"], "M (the number of groups) must be an integer >= 1"),
    (["train", *TINY, "--objective", "iwae:k=5.5"], "k='5.5' is not an integer"),
    (["train", *TINY, "--objective", "iwae", "--k", "10000000000"], "out of memory: one tensor needed"),
    (["train", *TINY, "--resume", ""], "--resume must name a run folder or checkpoint"),
    (["train", *TINY, "--scheduler", "step", "--scheduler-args", "gamma=x"], "scheduler StepLR with"),
]


@pytest.mark.parametrize("argv, message", CLI_CASES, ids=[" ".join(c[0][-2:]) for c in CLI_CASES])
def test_bad_values_through_the_cli(argv, message, tmp_path, capsys):
    assert main(argv + ["--run-dir", str(tmp_path / "r")]) == 2
    one_line_error(capsys, message)


@pytest.mark.parametrize("argv", [["apply", "RUN", "--task", "denoise", "--k", "0"], ["sample", "RUN", "--n", "0"],
                                  ["sample", "RUN", "--n", "-1"], ["compare", "--eval-k", "0"],
                                  ["bdmc", "RUN", "--n", "0"], ["train", "--warmup-epochs", "inf"],
                                  ["train", "--beta", "nan"], ["train", "--hidden", "16.7"]])
def test_bad_counts_are_refused_by_the_parser_before_any_work(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "error: argument" in err and "Traceback" not in err


def test_the_api_takes_float64_float16_and_integer_data_as_the_cli_does():
    binary = (X > 0.5).float()
    states = []
    for data in (binary, binary.double(), binary.half(), binary.long(), binary.bool()):
        m = vae()
        pvae.fit(m, data, epochs=1, batch_size=10, progress=False)
        states.append(m.state_dict())
    for s in states[1:]:
        assert all(torch.equal(states[0][k], s[k]) for k in s)


def test_a_huge_sample_request_says_what_was_asked(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--run-dir", str(run)]) == 0
    assert main(["sample", str(run), "--n", "100000000000"]) == 2
    one_line_error(capsys, "out of memory", "lower --n 100000000000")


# -- bad files ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("finished") / "run"
    assert main(["train", *TINY, "--run-dir", str(run)]) == 0
    return run


def test_damaged_run_files_are_named(finished_run, tmp_path, capsys):
    import shutil

    for name in ("data.json", "history.json"):
        run = tmp_path / name
        shutil.copytree(finished_run, run)
        (run / name).write_text("{ broken")
        assert main(["eval", str(run), "--k", "2", "--quiet"]) == 2
        one_line_error(capsys, f"damaged run file {run / name}: not valid JSON")


def test_checkpoints_that_are_not_pvae_checkpoints_are_one_line(finished_run, tmp_path, capsys):
    (tmp_path / "c.json").write_text("{}")
    assert main(["eval", str(tmp_path / "c.json")]) == 2
    err = one_line_error(capsys, "is not a pvae checkpoint (not a file torch.save wrote)")
    assert "weights_only" not in err
    state = torch.load(finished_run / "checkpoint.pt", weights_only=True)
    del state["model_state"]
    torch.save(state, tmp_path / "no_state.pt")
    assert main(["eval", str(tmp_path / "no_state.pt")]) == 2
    one_line_error(capsys, "is not a complete pvae checkpoint: it lacks model_state")
    state = torch.load(finished_run / "checkpoint.pt", weights_only=True)
    config = json.loads(state["config"])
    state["config"] = json.dumps({**config, "latent_dim": 3})
    torch.save(state, tmp_path / "other_size.pt")
    assert main(["eval", str(tmp_path / "other_size.pt")]) == 2
    one_line_error(capsys, "does not fit this model", "another model size")


# -- the file system -----------------------------------------------------------------------------------------
def test_a_full_disk_while_checkpointing_is_one_line_and_leaves_no_temporary_file(tmp_path, monkeypatch, capsys):
    import pvae.training.checkpoint

    def full(*a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")
    monkeypatch.setattr(torch, "save", full)
    monkeypatch.setattr(pvae.util.files.shutil, "disk_usage", lambda p: type("u", (), {"free": 0})())
    run = tmp_path / "run"
    assert main(["train", *TINY, "--run-dir", str(run)]) == 2
    err = one_line_error(capsys, f"cannot write {run / 'checkpoint.pt'}: the disk is full")
    assert "enforce fail" not in err.split("(")[0]
    assert not [p for p in run.iterdir() if ".tmp" in p.name] and not (run / ".pvae.lock").exists()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_stop_with_a_message_and_clean_files(sig, tmp_path):
    run = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-m", "pvae", "train", *TINY[:4], "--n-train", "1000", "--epochs", "500",
                          *TINY[6:], "--run-dir", str(run)], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (run / "checkpoint.pt").exists() and time.time() < deadline:
        time.sleep(0.2)
    p.send_signal(sig)
    rc, err = p.wait(timeout=60), p.stderr.read()
    assert rc == 143, err
    assert err.strip() == f"pvae: stopped by {sig.name}; the last checkpoint is kept"
    assert not [f for f in run.iterdir() if ".tmp" in f.name or f.name == ".pvae.lock"]
    assert pvae.load_checkpoint(run)["epoch"] >= 1


# -- first-hour rough edges -----------------------------------------------------------------------------------
def test_help_shows_defaults_and_train_binarizes_like_the_demo(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "(default: 0.001)" in out and "(default: auto)" in out and "(default: 50)" in out
    assert main(["train", *TINY[:-2], "--run-dir", str(tmp_path / "r")]) == 0
    assert json.loads((tmp_path / "r" / "data.json").read_text())["binarize"] == "dynamic"


def test_exclude_class_is_recorded_so_apply_anomaly_needs_no_more(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--exclude-class", "1", "--run-dir", str(run)]) == 0
    assert json.loads((run / "data.json").read_text())["exclude_class"] == 1
    assert main(["apply", str(run), "--task", "anomaly", "--k", "5", "--quiet"]) == 0
    assert json.loads((run / "anomaly.json").read_text())["anomaly_class"] == 1


def test_no_progress_bars_off_a_terminal_but_one_line_per_epoch(capsys):
    pvae.fit(vae(), X, epochs=2, batch_size=10, test=X[:5], progress=True)
    cap = capsys.readouterr()
    assert "\r" not in cap.err and "\r" not in cap.out
    assert [line.split()[0:2] for line in cap.out.splitlines()] == [["epoch", "1/2"], ["epoch", "2/2"]]


def test_point_mass_and_discrete_models_say_what_they_measure(capsys):
    ae = pvae.AE(x_shape=(784,), latent_dim=2, hidden=(8,))
    pvae.fit(ae, X, epochs=1, batch_size=10, test=X[:5], progress=True)
    assert "test log p(x|z)" in capsys.readouterr().out
    g = pvae.GumbelSoftmaxVAE(x_shape=(784,), num_vars=2, num_classes=3, hidden=(8,))
    s = pvae.evaluate(g, X[:5], k=3, progress=False)["summary"]
    assert "active_units" not in s and any("active units are not reported" in n for n in s["notes"])


def test_fit_writes_the_report_and_keeps_the_best_checkpoint_and_calls_back(tmp_path):
    seen = []
    h = pvae.fit(vae(), X, epochs=3, batch_size=10, test=X[:10], run_dir=tmp_path / "r", progress=False, eval_k=5,
                 callbacks=[lambda record, history: seen.append((record["epoch"], len(history)))])
    assert seen == [(1, 1), (2, 2), (3, 3)]
    assert {"results.json", "summary.md", "training_curves.png"} <= {p.name for p in (tmp_path / "r").iterdir()}
    best = max(h, key=lambda r: r["test_elbo"])["epoch"]
    assert pvae.load_checkpoint(tmp_path / "r" / "best.pt")["epoch"] == best
    assert pvae.report(h, X[:10], k=5, run_dir=tmp_path / "again", progress=False)["k"] == 5


def test_tensorboard_callback_logs_every_number(monkeypatch, tmp_path):
    import types

    logged = []

    class Writer:
        def __init__(self, log_dir):
            self.log_dir = log_dir

        def add_scalar(self, tag, value, step):
            logged.append((tag, step))

        def flush(self):
            pass

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=Writer))
    pvae.fit(vae(), X, epochs=2, batch_size=10, test=X[:5], progress=False,
             callbacks=[pvae.training.callbacks.TensorBoard(tmp_path)])
    assert ("pvae/test_elbo", 2) in logged and ("pvae/train_loss", 1) in logged


def test_traversal_sweeps_the_most_active_dimensions(monkeypatch):
    import pvae.analysis.plots

    m = pvae.VAE(x_shape=(784,), latent_dim=10, hidden=(8,))
    spread = torch.ones(10)
    spread[[7, 3]] = torch.tensor([5.0, 9.0])
    monkeypatch.setattr(m, "encode", lambda x: torch.randn(x.shape[0], 10) * spread)
    drawn = {}
    monkeypatch.setattr(pvae.analysis.plots, "image_grid", lambda rows, path, titles=None: drawn.setdefault("titles", titles))
    pvae.analysis.plots.traversal(m, X[0], data=X, rows=2)
    assert drawn["titles"] == ["z_3", "z_7"]


def test_latent_space_names_the_classes(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import pvae.analysis.plots

    test = pvae.load_dataset("fashion-mnist-sample", "test", n=50)
    m = pvae.VAE(x_shape=(1, 28, 28), latent_dim=2, hidden=(8,))
    fig = pvae.analysis.plots.latent_space(m, test.x, test.y, class_names=test.classes)
    texts = {t.get_text() for t in fig.axes[0].get_legend().get_texts()}
    assert "Trouser" in texts and "Ankle boot" in texts


def test_a_huge_k_through_the_api_is_one_line_saying_what_was_asked():
    with pytest.raises(MemoryError, match=r"out of memory: .* are free; lower k \(10000000000\) or batch_size") as e:
        pvae.fit(vae(), X, objective="iwae", k=10 ** 10, progress=False)
    assert "\n" not in str(e.value)


def test_a_bad_input_found_after_the_folder_is_named_leaves_no_empty_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", *TINY, "--model", "gumbel", "--prior", "mog"]) == 2
    one_line_error(capsys, "--prior applies to --model vae")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_a_lock_file_still_being_written_is_not_taken_over(tmp_path):
    """Another process has just created the lock and not yet written its pid into it: that lock is
    not stale (taking it over let two trainings into one folder, both exiting 0, once in a while)."""
    import threading

    from pvae.training.runs import RunLock

    run = tmp_path / "run"
    run.mkdir()
    lock = run / ".pvae.lock"
    lock.write_text("")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        threading.Timer(0.2, lambda: lock.write_text(str(sleeper.pid))).start()
        with pytest.raises(ValueError, match="in use by another pvae process"):
            with RunLock(run):
                pass
    finally:
        sleeper.kill()


def test_a_misnamed_output_or_anomaly_class_is_refused_before_the_work(finished_run, tmp_path, capsys):
    assert main(["apply", str(finished_run), "--task", "inpaint", "--k", "2", "--out", str(tmp_path / "x.txt")]) == 2
    one_line_error(capsys, ".txt is not one matplotlib writes")
    assert main(["sample", str(finished_run), "--n", "2", "--out", str(tmp_path / "x")]) == 2
    one_line_error(capsys, "no suffix is not one matplotlib writes")
    assert main(["apply", str(finished_run), "--task", "anomaly", "--anomaly-class", "42", "--k", "2"]) == 2
    one_line_error(capsys, "--anomaly-class 42: the test data hold classes [")
    assert not list(tmp_path.iterdir())


def test_compare_takes_a_model_instance_and_leaves_it_untouched(tmp_path):
    m = vae(x_shape=(16,))
    x = (torch.rand(40, 16) < 0.3).float()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    out = pvae.compare(m, x, x[:10], objectives=("elbo", "iwae:k=2"), epochs=1, batch_size=20, eval_k=3,
                       run_dir=tmp_path / "c", progress=False)
    for k, v in m.state_dict().items():
        torch.testing.assert_close(v, before[k])  # each objective trained a copy
    a, b = (out["runs"][s]["model"] for s in ("elbo", "iwae:k=2"))
    assert a is not m and b is not m and a is not b
    assert not torch.equal(a.state_dict()["decoder.net.0.weight"], before["decoder.net.0.weight"])


def test_a_missing_optional_package_is_one_line(tmp_path, monkeypatch, capsys):
    import builtins

    real = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError("no tensorboard here")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    assert main(["train", *TINY, "--tensorboard", str(tmp_path / "tb"), "--run-dir", str(tmp_path / "r")]) == 2
    one_line_error(capsys, "TensorBoard logging needs the tensorboard package: pip install tensorboard")
