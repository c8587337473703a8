"""One owner per run folder (issue 29, class 1): the run's files are written only by the training
that made them; every other command writes new files; ``--overwrite`` removes what pvae wrote for
the earlier run and nothing else; resuming from best.pt never touches the run it comes from."""

import json

import pytest

import pvae
from pvae.cli import main

TINY = ["--n-train", "120", "--n-test", "20", "--epochs", "1", "--hidden", "8", "--latent-dim", "2", "--quiet",
        "--binarize", "static"]


def one_line_error(capsys, *parts):
    err = capsys.readouterr().err
    assert err.startswith("pvae: error: ") and len(err.strip().splitlines()) == 1, err
    for part in parts:
        assert part in err, err
    return err


def snapshot(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("owned") / "run"
    assert main(["train", *TINY, "--eval-k", "5", "--run-dir", str(run)]) == 0
    return run


def test_overwrite_removes_what_pvae_wrote_and_keeps_the_users_files(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--eval-k", "5", "--run-dir", str(run)]) == 0
    assert main(["eval", str(run), "--k", "3", "--quiet"]) == 0
    assert main(["sample", str(run), "--n", "4"]) == 0
    (run / "my_figure.png").write_bytes(b"mine")  # a figure of the user's own, named like pvae's
    (run / "mine").mkdir()
    (run / "mine" / "results.json").write_text("{}")  # a folder of the user's that looks like a run
    (run / "eval-is-k3-seed0" / "notes.txt").write_text("kept")  # the user's note inside pvae's eval folder
    assert main(["train", *TINY, "--eval-k", "0", "--seed", "1", "--run-dir", str(run), "--overwrite"]) == 0
    names = {p.name for p in run.iterdir()}
    assert "samples-n4-seed0.png" not in names and "latent_space.png" not in names and "results.json" not in names
    assert (run / "my_figure.png").read_bytes() == b"mine"
    assert (run / "mine" / "results.json").read_text() == "{}"
    assert {p.name for p in (run / "eval-is-k3-seed0").iterdir()} == {"notes.txt"}  # pvae's files went, the note stayed
    assert pvae.load_checkpoint(run)["fit_config"]["seed"] == 1


def test_no_other_command_replaces_a_run_even_with_overwrite(trained, capsys):
    before = snapshot(trained)
    assert main(["eval", str(trained), "--k", "3", "--out", str(trained), "--overwrite", "--quiet"]) == 2
    one_line_error(capsys, "pvae train", "--out")
    assert main(["compare", "--objectives", "elbo", *TINY[:8], "--binarize", "static", "--quiet", "--eval-k", "2",
                 "--run-dir", str(trained), "--overwrite"]) == 2
    one_line_error(capsys, "pvae train")
    assert snapshot(trained) == before


@pytest.mark.parametrize("argv, what", [
    (["sample", "{run}", "--n", "4", "--out", "{run}/checkpoint.pt"], "checkpoint.pt exists"),
    (["sample", "{run}", "--n", "4", "--save-tensor", "--out", "{run}/checkpoint.png"], "checkpoint.pt exists"),
    (["sample", "{run}", "--n", "4", "--out", "{run}/samples.png"], "samples.png exists"),
    (["apply", "{run}", "--task", "denoise", "--out", "{run}/config.json"], "config.json exists"),
])
def test_outputs_never_land_on_a_run_file(trained, argv, what, capsys):
    before = snapshot(trained)
    assert main([a.format(run=trained) for a in argv]) == 2
    one_line_error(capsys, what, "choose another name")
    assert snapshot(trained) == before


def test_a_second_bdmc_apply_or_sample_keeps_the_first_ones_results(trained, capsys):
    bdmc = ["bdmc", str(trained), "--n", "2", "--steps", "2", "--chains", "2", "--leapfrog", "1", "--quiet"]
    assert main(bdmc) == 0 and main(bdmc + ["--seed", "1"]) == 0
    first, second = (json.loads((trained / n).read_text()) for n in ("bdmc.json", "bdmc-2.json"))
    assert first[0]["lower"] != second[0]["lower"]  # two seeds: both kept
    assert (trained / "bdmc_2.pt").exists() and (trained / "bdmc-2_2.pt").exists()
    apply = ["apply", str(trained), "--task", "denoise", "--quiet"]
    assert main(apply) == 0 and main(apply + ["--noise", "0.3"]) == 0
    assert json.loads((trained / "denoise.json").read_text()) != json.loads((trained / "denoise-2.json").read_text())
    assert (trained / "denoise-2.png").exists()
    sample = ["sample", str(trained), "--n", "4", "--save-tensor"]
    assert main(sample) == 0 and main(sample) == 0
    assert {"samples-n4-seed0.pt", "samples-n4-seed0-2.png", "samples-n4-seed0-2.pt"} <= {p.name for p in trained.iterdir()}


def test_resume_from_best_pt_branches_into_a_new_folder_and_never_touches_the_run(tmp_path, capsys):
    run, branch = tmp_path / "run", tmp_path / "branch"
    assert main(["train", *TINY, "--epochs", "2", "--eval-k", "0", "--run-dir", str(run)]) == 0
    assert (run / "best.pt").exists()
    before = snapshot(run)
    for extra in ([], ["--overwrite"]):
        assert main(["train", "--resume", str(run / "best.pt"), "--epochs", "3", "--quiet", *extra]) == 2
        one_line_error(capsys, "best.pt", "--run-dir NEW")
        assert snapshot(run) == before
    assert main(["train", "--resume", str(run / "best.pt"), "--epochs", "3", "--quiet", "--run-dir", str(branch)]) == 0
    assert snapshot(run) == before
    best_epoch = pvae.load_checkpoint(run / "best.pt")["epoch"]
    state = pvae.load_checkpoint(branch)
    assert state["epoch"] == 3 and len(state["history"]) == 3 and best_epoch <= 2
    assert json.loads((branch / "data.json").read_text())["n_train"] == 120  # the data the run trained on


def test_the_api_refuses_to_resume_best_pt_in_place(tmp_path):
    x = pvae.load_dataset("fashion-mnist-sample", split="train").x[:64].reshape(64, -1).round()
    model = pvae.VAE(x_shape=(784,), latent_dim=2, hidden=(8,))
    pvae.fit(model, x, epochs=2, batch_size=32, run_dir=tmp_path / "r", progress=False, test=x[:16])
    before = snapshot(tmp_path / "r")
    with pytest.raises(ValueError, match="best.pt.*another run folder"):
        pvae.fit(model, x, epochs=3, batch_size=32, run_dir=tmp_path / "r", resume=tmp_path / "r" / "best.pt",
                 overwrite=True, progress=False)
    assert snapshot(tmp_path / "r") == before


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/cmdline"), reason="reads /proc")
def test_a_lock_naming_a_live_process_of_another_program_is_stale(tmp_path):
    import subprocess

    run = tmp_path / "run"
    run.mkdir()
    other = subprocess.Popen(["sleep", "60"])  # the lock's pid, reused by a program that is not pvae
    try:
        (run / ".pvae.lock").write_text(str(other.pid))
        assert main(["train", *TINY, "--eval-k", "0", "--run-dir", str(run)]) == 0
    finally:
        other.kill()
        other.wait()
    assert pvae.load_checkpoint(run)["epoch"] == 1
