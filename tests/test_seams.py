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
