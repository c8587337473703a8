"""The ``pvae`` command end to end on the embedded sample."""

import json
import subprocess
import sys

import pytest

from pvae.cli import main

TINY = ["--n-train", "300", "--n-test", "40", "--epochs", "2", "--hidden", "32", "--latent-dim", "4",
        "--eval-k", "20", "--quiet", "--binarize", "static"]


@pytest.mark.parametrize("command", ["train", "eval", "sample", "apply", "compare", "demo"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    assert "usage: pvae " + command in capsys.readouterr().out


def test_train_eval_sample_end_to_end(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--run-dir", str(run)]) == 0
    out = capsys.readouterr().out
    assert "test log p(x)" in out and "active units" in out
    files = {p.name for p in run.iterdir()}
    assert {"config.json", "data.json", "history.json", "history.csv", "checkpoint.pt", "results.json", "summary.md",
            "reconstructions.png", "samples.png", "latent_space.png", "interpolation.png", "training_curves.png",
            "khat.png"} <= files
    res = json.loads((run / "results.json").read_text())
    assert res["n"] == 40 and res["k"] == 20 and res["epochs"] == 2
    assert res["log_px"] >= res["elbo"] - 1.0 and res["log_px"] < 0
    assert res["elbo"] == pytest.approx(res["recon"] - res["kl"], abs=1e-3)
    assert "| test log p(x)" in (run / "summary.md").read_text()

    # eval re-reads the run's data settings; a new k is reported in a folder of its own
    assert main(["eval", str(run), "--k", "30", "--quiet"]) == 0
    res = json.loads((run / "eval-is-k30-seed0" / "results.json").read_text())
    assert res["k"] == 30 and res["n"] == 40

    assert main(["sample", str(run), "--n", "9", "--out", str(tmp_path / "s.png"), "--save-tensor"]) == 0
    assert (tmp_path / "s.png").stat().st_size > 1000
    import torch

    assert torch.load(tmp_path / "s.pt", weights_only=True).shape == (9, 784)


def test_resume_continues_a_run(tmp_path):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--eval-k", "0", "--run-dir", str(run)]) == 0
    args = [a if a != "2" else "3" for a in TINY]  # epochs 2 -> 3
    assert main(["train", *args, "--eval-k", "0", "--run-dir", str(run), "--resume", str(run)]) == 0
    hist = json.loads((run / "history.json").read_text())
    assert [r["epoch"] for r in hist] == [1, 2, 3]


@pytest.mark.parametrize("argv, message", [
    (["train", "--dataset", "imagenet"], "unknown dataset 'imagenet'"),
    (["train", "--n-train", "50", "--epochs", "0", "--objective", "iwae:k=0"], "k must be an integer >= 1"),
    (["eval", "/no/such/run"], "no checkpoint at /no/such/run"),
])
def test_bad_input_is_one_line_and_status_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("pvae: error: ") and message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_console_script_demo_smoke(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pvae", "demo", "--smoke", "--quiet", "--run-dir", str(tmp_path / "d")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "test log p(x)" in r.stdout and "demo wall time" in r.stdout
    assert (tmp_path / "d" / "results.json").exists()


def test_cli_reference_in_docs_is_generated_from_the_parser():
    from pathlib import Path

    from pvae.cli import markdown_reference

    doc = Path(__file__).parent.parent / "docs" / "cli.md"
    assert doc.read_text() == markdown_reference(), "regenerate: python -m pvae.cli --markdown > docs/cli.md"


def test_compare_with_a_hierarchical_preset(tmp_path, capsys):
    assert main(["compare", "--preset", "iwae-2layer", "--inference", "ladder", "--n-train", "100", "--n-test", "20",
                 "--epochs", "1", "--eval-k", "10", "--quiet", "--binarize", "static", "--objectives", "elbo",
                 "mf-elbo", "--run-dir", str(tmp_path)]) == 0
    assert "| mf-elbo | 1 |" in capsys.readouterr().out
    assert pvae_load(tmp_path / "mf-elbo").inference == "ladder"


def pvae_load(path):
    import pvae

    return pvae.load(path)


VARIANTS = {  # --model: (extra arguments, files its run must have, results it must report)
    "cvae": (["--prior", "learned"], {"reconstructions.png", "samples.png"}, {"log_px"}),
    "m2": (["--labels", "30"], {"reconstructions.png", "samples.png"}, {"log_px", "accuracy"}),
    "structured": (["--visible", "2"], {"completions.png"}, {"log_px"}),
    "gumbel": (["--num-vars", "4", "--num-classes", "3"], {"reconstructions.png", "samples.png"},
               {"log_px", "temperature"}),
    "ae": (["--noise", "0.3"], {"reconstructions.png", "latent_space.png"}, {"recon"}),
    "vqvae": (["--num-codes", "8"], {"reconstructions.png"}, {"recon"}),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_train_every_variant(variant, tmp_path, capsys):
    extra, figures, keys = VARIANTS[variant]
    run = tmp_path / variant
    assert main(["train", "--model", variant, *TINY, *extra, "--run-dir", str(run)]) == 0
    files = {p.name for p in run.iterdir()}
    assert figures <= files, figures - files
    res = json.loads((run / "results.json").read_text())
    assert keys <= set(res)
    if variant in ("ae", "vqvae"):  # point-mass guides: no log p(x) to report
        assert "log_px" not in res and res["k"] == 1
    if variant == "m2":
        assert 0 <= res["accuracy"] <= 1
        assert json.loads((run / "config.json").read_text())["fit"]["objective"] == "enum-elbo"
    assert main(["eval", str(run), "--k", "5", "--quiet"]) == 0


def test_variant_options_are_checked(capsys):
    assert main(["train", "--model", "gumbel", "--prior", "learned", *TINY]) == 2
    assert "--prior applies to --model vae (standard, mog, vamp, flow), cvae" in capsys.readouterr().err
    assert main(["train", "--model", "m2", "--preset", "iwae-1layer", *TINY]) == 2
    assert "--preset builds a VAE" in capsys.readouterr().err


def test_sample_refuses_models_without_a_prior(tmp_path, capsys):
    run = tmp_path / "vq"
    assert main(["train", "--model", "vqvae", *TINY, "--code-prior-epochs", "0", "--run-dir", str(run)]) == 0
    assert main(["sample", str(run)]) == 2
    assert "VQVAE cannot sample: its prior over codes is not learned" in capsys.readouterr().err


def test_apply_anomaly_denoise_inpaint(tmp_path, capsys):
    run = tmp_path / "no-bags"
    assert main(["train", *TINY, "--exclude-class", "8", "--run-dir", str(run)]) == 0
    assert json.loads((run / "config.json").read_text())["fit"]["n_train"] == 300 - 27  # the 27 bags left out
    assert main(["apply", str(run), "--task", "anomaly", "--anomaly-class", "8", "--k", "20", "--quiet"]) == 0
    res = json.loads((run / "anomaly.json").read_text())
    assert 0 <= res["auroc"] <= 1 and res["n"] == 40 and (run / "anomaly.png").exists()
    for task in ("denoise", "inpaint"):
        assert main(["apply", str(run), "--task", task, "--k", "20"]) == 0
        res = json.loads((run / f"{task}.json").read_text())
        assert res["mse"] > 0 and res["mse_reference"] > 0 and (run / f"{task}.png").exists()
    assert main(["apply", str(run), "--task", "anomaly", "--k", "20", "--quiet"]) == 0  # the class left out
    assert json.loads((run / "anomaly.json").read_text())["anomaly_class"] == 8
    assert main(["train", *TINY, "--exclude-class", "11", "--run-dir", str(tmp_path / "x")]) == 2
    assert "no such class" in capsys.readouterr().err


def test_an_iaf_run_reports_and_a_failing_figure_costs_only_itself(tmp_path, capsys, monkeypatch):
    import pvae.analysis.plots

    def broken(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(pvae.analysis.plots, "latent_space", broken)
    run = tmp_path / "iaf"
    assert main(["train", "--guide", "iaf", "--n-train", "200", "--n-test", "20", "--epochs", "1", "--eval-k", "10",
                 "--latent-dim", "4", "--hidden", "16", "--run-dir", str(run), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "figure latent_space not drawn: OSError: No space left on device" in err
    results = json.loads((run / "results.json").read_text())
    assert "log_px" in results and "log_px_se" in results
    assert (run / "interpolation.png").exists() and not (run / "latent_space.png").exists()


def test_eval_with_ais_and_bdmc_from_the_command_line(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--n-train", "200", "--n-test", "8", "--epochs", "1", "--eval-k", "10", "--latent-dim", "4",
                 "--hidden", "16", "--binarize", "static", "--run-dir", str(run), "--quiet"]) == 0
    assert main(["eval", str(run), "--k", "50", "--method", "ais", "--steps", "4", "--chains", "2", "--leapfrog", "2",
                 "--quiet"]) == 0
    results = json.loads((run / "eval-ais-k50-steps4-seed0" / "results.json").read_text())
    assert results["ais_steps"] == 4 and results["log_px_ais"] < 0 and results["log_px_ais_se"] > 0
    assert results["log_px_ais_mc_se"] > 0  # the chains' own spread, two chains per datapoint
    assert abs(results["ais_minus_is"] - (results["log_px_ais"] - results["log_px"])) < 1e-3
    assert main(["bdmc", str(run), "--n", "4", "--steps", "2", "6", "--chains", "2", "--leapfrog", "2", "--quiet"]) == 0
    rows = json.loads((run / "bdmc.json").read_text())
    assert [r["steps"] for r in rows] == [2, 6] and all(r["upper"] >= r["lower"] - 5 for r in rows)
    assert "| 6 | 2 |" in capsys.readouterr().out


def test_results_table_is_valid_markdown_with_pipes_in_its_labels():
    import re

    from pvae.analysis.report import ROWS, results_table

    table = results_table({key: 1.0 for key, _ in ROWS})
    for line in table.splitlines()[2:]:
        assert len(re.findall(r"(?<!\\)\|", line)) == 3, line  # two cells: no bare | inside a label
