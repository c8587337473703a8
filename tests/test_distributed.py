"""Data-parallel training: 2 CPU processes with gloo under torchrun."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

import pvae
from ddp_helpers import DeltaVAE, data

TESTS = Path(__file__).parent
FIT = dict(epochs=2, batch_size=5, lr=0.1, seed=3, progress=False)  # 2 steps an epoch


def torchrun(args, tmp_path, timeout=300):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           *args], capture_output=True, text=True, timeout=timeout, cwd=tmp_path, env=env)


def test_ddp_steps_equal_single_process_steps_on_the_concatenated_batch(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys, torch, pvae
        from ddp_helpers import DeltaVAE, data
        m = DeltaVAE()
        h = pvae.fit(m, data(), run_dir=sys.argv[1], **{FIT!r})
        torch.save(m.state_dict(), sys.argv[2] + os.environ["RANK"])
        print("losses", [r["train_loss"] for r in h])
    """))
    r = torchrun([str(script), str(tmp_path / "run"), str(tmp_path / "params")], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    single = DeltaVAE()
    h = pvae.fit(single, data(), distributed=False, **FIT)
    for rank in (0, 1):
        ddp = torch.load(tmp_path / f"params{rank}", weights_only=True)
        for k, v in single.state_dict().items():
            torch.testing.assert_close(ddp[k], v, atol=1e-5, rtol=1e-5)  # 4 Adam steps agree
    # exactly one checkpoint and one set of run files, written by rank 0
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".pvae-files", "checkpoint.pt", "config.json",
                                                                    "history.csv", "history.json"]
    listed = (tmp_path / "run" / ".pvae-files").read_text().splitlines()
    assert listed[0] == "#pvae train" and sorted(listed[1:]) == ["checkpoint.pt", "config.json", "history.csv",
                                                                 "history.json"]  # what rank 0 wrote, once each
    state = pvae.load_checkpoint(tmp_path / "run")
    assert state["epoch"] == 2 and state["fit_config"]["processes"] == 2
    ddp_losses = [r["train_loss"] for r in state["history"]]
    torch.testing.assert_close(torch.tensor(ddp_losses), torch.tensor([r["train_loss"] for r in h]), rtol=1e-5,
                               atol=1e-5)


def test_cli_train_under_torchrun(tmp_path):
    r = torchrun(["-m", "pvae", "train", "--n-train", "200", "--n-test", "40", "--epochs", "1", "--hidden", "16",
                  "--latent-dim", "2", "--eval-k", "10", "--quiet", "--device", "cpu", "--binarize", "static",
                  "--run-dir", "run"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "run"
    assert json.loads((run / "config.json").read_text())["fit"]["processes"] == 2
    assert (run / "results.json").exists() and (run / "checkpoint.pt").exists()
    assert r.stdout.count("run folder:") == 1  # rank 0 alone reports
