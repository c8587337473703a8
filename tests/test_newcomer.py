"""The newcomer's path (issue 30) and the run folder's seams (issue 29): the README's own MyVAE
through every CLI command, data that do not fit the likelihood refused before any work, the
methods apply and sample need named, and no code imported because a run folder names it."""

import json
import textwrap

import pytest
import torch

import pvae
from pvae.cli import main

README_VAE = textwrap.dedent('''
    import pathlib
    import pyro
    import pyro.distributions as dist
    import torch

    pathlib.Path("imported.marker").write_text("the program file ran")  # what importing this file leaves


    class MyVAE(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = torch.nn.Sequential(torch.nn.Linear(784, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4))
            self.decoder = torch.nn.Sequential(torch.nn.Linear(2, 32), torch.nn.Tanh(), torch.nn.Linear(32, 784))

        def model(self, x):
            pyro.module("decoder", self.decoder)
            with pyro.plate("batch", x.shape[0]):
                z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 2), 1.).to_event(1))
                pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)

        def guide(self, x):
            pyro.module("encoder", self.encoder)
            loc, log_scale = self.encoder(x).chunk(2, -1)
            with pyro.plate("batch", x.shape[0]):
                pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))
''')
SMALL = ["--dataset", "fashion-mnist-sample", "--n-train", "200", "--n-test", "30", "--epochs", "1", "--quiet"]


@pytest.fixture
def program(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_vae.py").write_text(README_VAE)
    return "my_vae.py:MyVAE"


def one_line(capsys, *fragments):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, err
    return err


def test_the_readme_program_goes_through_every_command(program, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--model", program, *SMALL, "--binarize", "dynamic", "--eval-k", "5", "--run-dir",
                 str(run)]) == 0
    results = json.loads((run / "results.json").read_text())
    assert results["n"] == 30 and results["log_px"] < 0
    assert any("flattened to one vector each" in n for n in results.get("notes", []))  # said, not silent
    assert main(["eval", str(run), "--model", program, "--k", "5", "--quiet"]) == 0
    assert main(["bdmc", str(run), "--model", program, "--n", "3", "--steps", "4", "--chains", "2", "--quiet"]) == 0
    assert main(["apply", str(run), "--model", program, "--task", "anomaly", "--anomaly-class", "0", "--k", "5",
                 "--quiet"]) == 0
    assert json.loads((run / "anomaly.json").read_text())["n"] == 30
    capsys.readouterr()
    assert main(["apply", str(run), "--model", program, "--task", "denoise"]) == 2
    one_line(capsys, "needs a method reconstruct(x)", "docs/tutorials/own-pyro-program.md")
    assert main(["apply", str(run), "--model", program, "--task", "inpaint"]) == 2
    one_line(capsys, "inpainting needs pvae's VAE interface", "posterior")
    assert main(["sample", str(run), "--model", program, "--n", "4"]) == 2
    one_line(capsys, "has no method sample(n)", "--sampler gmm")
    assert main(["compare", "--model", program, *SMALL, "--binarize", "dynamic", "--eval-k", "3", "--objectives",
                 "elbo", "iwae:k=2", "--run-dir", str(tmp_path / "cmp")]) == 0


def test_grey_data_under_a_bernoulli_program_are_refused_before_any_work(program, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--model", program, *SMALL, "--binarize", "none", "--run-dir", str(run)]) == 2
    one_line(capsys, "do not fit the model's observed site 'x'", "Bernoulli", "--binarize dynamic")
    assert not run.exists()  # nothing half-made is left behind


def test_a_program_that_takes_neither_shape_is_refused_naming_x_shape():
    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(100, 4)

        def model(self, x):
            import pyro
            import pyro.distributions as dist

            with pyro.plate("b", x.shape[0]):
                z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 2), 1.0).to_event(1))
                pyro.sample("x", dist.Normal(self.net.weight.sum() + z.sum(-1, keepdim=True), 1.0).to_event(1),
                            obs=x.reshape(x.shape[0], -1)[:, :1])

        def guide(self, x):
            import pyro
            import pyro.distributions as dist

            loc = self.net(x)[..., :2]
            with pyro.plate("b", x.shape[0]):
                pyro.sample("z", dist.Normal(loc, 1.0).to_event(1))

    with pytest.raises(ValueError, match=r"takes neither the training data's datapoints as they are \(1, 28, 28\).*"
                                         r"nor flattened to \(784,\): give the module an x_shape attribute"):
        pvae.fit(Odd(), torch.rand(20, 1, 28, 28), epochs=1, progress=False)


def test_no_code_is_imported_because_a_run_folder_names_it(program, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--model", program, *SMALL, "--binarize", "dynamic", "--eval-k", "0", "--run-dir",
                 str(run)]) == 0
    record = json.loads((run / "data.json").read_text())
    assert record["program"] == program and len(record["program_sha256"]) == 64
    (tmp_path / "imported.marker").unlink()
    capsys.readouterr()
    for command in (["eval", str(run), "--k", "5"], ["sample", str(run)], ["apply", str(run), "--task", "anomaly"],
                    ["bdmc", str(run), "--n", "2"], ["train", "--resume", str(run), "--epochs", "2"]):
        assert main([*command, "--quiet"] if command[0] != "sample" else command) == 2
        one_line(capsys, "pvae does not import code that a run folder names", "--model")
    assert not (tmp_path / "imported.marker").exists(), "a command imported the program the run folder names"
    # a program whose source changed since the run is refused, unless accepted
    (tmp_path / "other.py").write_text(README_VAE + "\n# changed\n")
    assert main(["eval", str(run), "--model", "other.py:MyVAE", "--k", "5", "--quiet"]) == 2
    one_line(capsys, "is not the program the run", "--accept-program-change")
    assert main(["eval", str(run), "--model", "other.py:MyVAE", "--k", "5", "--quiet", "--accept-program-change"]) == 0
    assert main(["train", "--resume", str(run), "--model", program, "--epochs", "2", "--quiet"]) == 0
    assert json.loads((run / "history.json").read_text())[-1]["epoch"] == 2


def test_an_interrupted_run_knows_its_data(tmp_path, monkeypatch):
    """data.json is written before the first step: a run stopped during its first epoch still
    records what it trained on."""
    import pvae.training.fit as fit_module

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(fit_module, "_fit_epochs", interrupted)
    run = tmp_path / "run"
    assert main(["train", "--dataset", "fashion-mnist-sample", "--n-train", "100", "--n-test", "20", "--hidden", "8",
                 "--latent-dim", "2", "--exclude-class", "3", "--quiet", "--run-dir", str(run)]) == 130
    record = json.loads((run / "data.json").read_text())
    assert (record["dataset"], record["n_train"], record["exclude_class"], record["binarize"]) == \
        ("fashion-mnist-sample", 100, 3, "dynamic")


def test_a_program_that_opts_out_of_validation_keeps_its_grey_pixels():
    """Pyro's examples/vae puts grey MNIST pixels under Bernoulli(..., validate_args=False): the
    program's own choice, trained as Pyro trains it; without the opt-out the same data are refused."""
    import pyro
    import pyro.distributions as dist

    def program(validate):
        class GreyVAE(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.enc, self.dec = torch.nn.Linear(64, 4), torch.nn.Linear(2, 64)

            def model(self, x):
                pyro.module("dec", self.dec)
                with pyro.plate("data", x.shape[0]):
                    z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 2), 1.0).to_event(1))
                    kw = {} if validate else {"validate_args": False}
                    pyro.sample("x", dist.Bernoulli(torch.sigmoid(self.dec(z)), **kw).to_event(1), obs=x)

            def guide(self, x):
                pyro.module("enc", self.enc)
                loc, log_scale = self.enc(x).chunk(2, -1)
                with pyro.plate("data", x.shape[0]):
                    pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))

        return GreyVAE()

    grey = torch.rand(40, 64, generator=torch.Generator().manual_seed(0))
    h = pvae.fit(program(validate=False), grey, epochs=2, batch_size=20, progress=False)
    assert h[-1]["train_loss"] == h[-1]["train_loss"]  # trained, finite
    with pytest.raises(ValueError, match="do not fit the model's observed site 'x'"):
        pvae.fit(program(validate=True), grey, epochs=1, batch_size=20, progress=False)
