"""Training controls a PyTorch or Pyro user looks for (issue 30): the optimizer (torch.optim by name or
class, Pyro's optimizers), a learning-rate schedule, a validation split with early stopping and
best.pt chosen on it; in fit, the CLI, config.json and resume."""

import json
import math

import pyro
import pytest
import torch

import pvae
from pvae.cli import main


def vae():
    torch.manual_seed(0)
    return pvae.VAE(x_shape=(64,), latent_dim=3, hidden=(16,))


X = (torch.rand(120, 64, generator=torch.Generator().manual_seed(0)) < 0.3).float()


def test_a_pyro_optimizer_trains_as_the_same_torch_optimizer():
    a = pvae.fit(vae(), X, epochs=2, batch_size=40, lr=1e-2, progress=False, compile=False)
    b = pvae.fit(vae(), X, epochs=2, batch_size=40, optimizer=pyro.optim.Adam({"lr": 1e-2}), progress=False,
                 compile=False)
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert b.model is not a.model and b.run_dir is None


def test_any_torch_optimizer_by_name_with_its_arguments():
    h = pvae.fit(vae(), X, epochs=8, batch_size=40, lr=3e-4, optimizer="sgd", optimizer_args={"momentum": 0.9},
                 progress=False, compile=False)
    assert h[-1]["train_loss"] < h[0]["train_loss"] - 3, [r["train_loss"] for r in h]
    opt_args = {"weight_decay": 0.5}
    torch.manual_seed(1)
    decayed = pvae.fit(vae(), X, epochs=2, batch_size=40, optimizer="AdamW", optimizer_args=opt_args, progress=False)
    plain = pvae.fit(vae(), X, epochs=2, batch_size=40, optimizer="adamw", progress=False)
    assert decayed.model.decoder.net[0].weight.norm() < plain.model.decoder.net[0].weight.norm()


@pytest.mark.parametrize("kwargs, message", [
    (dict(optimizer="adamm"), r"unknown optimizer 'adamm'; choose one of torch.optim's: .*adam"),
    (dict(optimizer=42), r"optimizer must be a torch.optim name or class, or a Pyro optimizer"),
    (dict(optimizer="sgd", optimizer_args={"momentm": 0.9}), r"optimizer SGD with momentm=0.9, lr=0.001: .*momentm"),
    (dict(scheduler="cosin"), r"unknown scheduler 'cosin'; choose cosine, step, exponential, plateau"),
    (dict(validation=1.5), r"validation must be a fraction of the training data in \(0, 1\)"),
    (dict(early_stopping=3), r"early_stopping watches the validation or test ELBO: pass validation="),
    (dict(early_stopping=0, validation=0.2), r"early_stopping"),
])
def test_bad_training_controls_are_one_line(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        pvae.fit(vae(), X, epochs=1, progress=False, **kwargs)


def test_the_cosine_schedule_follows_its_formula_epoch_by_epoch():
    h = pvae.fit(vae(), X, epochs=4, batch_size=40, lr=1e-2, scheduler="cosine", progress=False)
    expected = [1e-2 * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(1, 5)]
    assert [r["lr"] for r in h] == pytest.approx(expected)


def test_validation_rows_are_held_out_and_pick_best_pt(tmp_path):
    h = pvae.fit(vae(), X, epochs=3, batch_size=40, lr=1e-2, validation=0.25, run_dir=tmp_path / "run",
                 progress=False)
    config = json.loads((tmp_path / "run" / "config.json").read_text())["fit"]
    assert config["n_train"] == 90 and config["validation"] == 0.25  # 30 of 120 rows held out
    vals = [r["val_elbo"] for r in h]
    best = [r["epoch"] for r in h if r.get("best")]
    running = [e + 1 for e, v in enumerate(vals) if v == max(vals[:e + 1])]
    assert best == running  # best.pt is written whenever the validation ELBO improves
    state = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert state["epoch"] == max(best)


def test_early_stopping_stops_an_overfitting_run_and_keeps_the_best_checkpoint(tmp_path):
    torch.manual_seed(0)
    m = pvae.VAE(x_shape=(64,), latent_dim=8, hidden=(128,))
    x = (torch.rand(24, 64, generator=torch.Generator().manual_seed(2)) < 0.3).float()  # memorised quickly
    h = pvae.fit(m, x, epochs=200, batch_size=12, lr=1e-2, validation=0.5, early_stopping=3,
                 run_dir=tmp_path / "run", progress=False)
    assert len(h) < 200 and h[-1]["stopped_early"]
    vals = [r["val_elbo"] for r in h]
    best_epoch = vals.index(max(vals)) + 1
    assert len(h) == best_epoch + 3  # three epochs without improvement, then stop
    assert torch.load(tmp_path / "run" / "best.pt", weights_only=True)["epoch"] == best_epoch


def test_resume_continues_the_schedule_and_refuses_another_optimizer(tmp_path):
    common = dict(batch_size=40, lr=1e-2, scheduler="step", scheduler_args={"step_size": 1, "gamma": 0.5},
                  progress=False, seed=3)
    straight = pvae.fit(vae(), X, epochs=4, run_dir=tmp_path / "a", **common)
    pvae.fit(vae(), X, epochs=2, run_dir=tmp_path / "b", **common)
    resumed = pvae.fit(vae(), X, epochs=4, run_dir=tmp_path / "b", resume=tmp_path / "b", **common)
    assert [r["lr"] for r in resumed] == [r["lr"] for r in straight] == [5e-3, 2.5e-3, 1.25e-3, 6.25e-4]
    for p, q in zip(straight.model.parameters(), resumed.model.parameters()):
        assert torch.equal(p, q)
    with pytest.raises(ValueError, match=r"resume: optimizer='sgd' differs from the run's optimizer='adam'"):
        pvae.fit(vae(), X, epochs=6, run_dir=tmp_path / "b", resume=tmp_path / "b", optimizer="sgd",
                 **common)


def test_the_cli_takes_the_controls_records_them_and_resume_keeps_them(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "--n-train", "200", "--n-test", "50", "--epochs", "2", "--hidden", "16", "--latent-dim", "2",
            "--eval-k", "7", "--quiet", "--run-dir", str(run), "--optimizer", "sgd", "--optimizer-args",
            "momentum=0.9,nesterov=true", "--scheduler", "step", "--scheduler-args", "step_size=1,gamma=0.5",
            "--validation", "0.1", "--early-stopping", "5"]
    assert main(args) == 0
    fit = json.loads((run / "config.json").read_text())["fit"]
    assert (fit["optimizer"], fit["optimizer_args"], fit["scheduler"], fit["scheduler_args"]) == \
        ("sgd", {"momentum": 0.9, "nesterov": True}, "step", {"step_size": 1, "gamma": 0.5})
    assert fit["validation"] == 0.1 and fit["early_stopping"] == 5 and fit["n_train"] == 180
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--epochs", "3", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "replaces results.json and summary.md" in out
    assert json.loads((run / "results.json").read_text())["k"] == 7  # the run's --eval-k, not the default 5000
    history = json.loads((run / "history.json").read_text())
    assert [r["lr"] for r in history] == pytest.approx([5e-4, 2.5e-4, 1.25e-4])
    assert main(["train", "--resume", str(run), "--epochs", "4", "--optimizer", "adam", "--quiet"]) == 2
    assert "--optimizer adam conflicts with the run" in capsys.readouterr().err


def test_version_and_usage_name_every_command(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"pvae {pvae.__version__}"
    from pvae.cli import parser

    usage = parser().format_usage()
    for command in ("train", "eval", "bdmc", "sample", "apply", "compare", "demo"):
        assert command in usage
