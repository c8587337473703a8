"""pvae.compare: same seed, data and budget for every objective; one evaluator; a table and figures."""

import json

import pytest
import torch

import pvae


@pytest.fixture(scope="module")
def data():
    return (pvae.load_dataset("sample", "train", binarize="static", n=400),
            pvae.load_dataset("sample", "test", binarize="static", n=60))


def test_compare_runs_every_objective_from_the_same_start(data, tmp_path):
    train, test = data
    config = dict(x_shape=(784,), latent_dim=4, hidden=(32,))
    out = pvae.compare(config, train, test, ["elbo", "iwae:k=4", "iwae-dreg:k=4"], epochs=0, eval_k=20,
                       run_dir=tmp_path, progress=False)
    # with no training, every run is the same model: identical starting weights
    models = [r["model"] for r in out["runs"].values()]
    for a in models[1:]:
        for (k, v), (_, w) in zip(models[0].state_dict().items(), a.state_dict().items()):
            assert torch.equal(v, w), k
    # ... and the same evaluation draws: identical numbers
    lls = [r["eval"]["log_px"] for r in out["runs"].values()]
    assert all(torch.equal(lls[0], ll) for ll in lls[1:])


def test_compare_table_and_files(data, tmp_path):
    train, test = data
    out = pvae.compare(dict(x_shape=(784,), latent_dim=4, hidden=(32,)), train, test,
                       ["elbo", "iwae:k=5", "renyi:k=5,alpha=0.5"], epochs=2, lr=3e-3, eval_k=30,
                       run_dir=tmp_path, progress=False)
    rows = out["rows"]
    assert [r["objective"] for r in rows] == ["elbo", "iwae:k=5", "renyi:k=5,alpha=0.5"]
    assert [r["k"] for r in rows] == [1, 5, 5]
    for r in rows:
        assert r["log_px"] > r["elbo"] - 1.0 and r["train_seconds"] > 0 and 0 <= r["khat_gt_0_7"] <= 1
    assert json.loads((tmp_path / "compare.json").read_text()) == rows
    md = (tmp_path / "compare.md").read_text()
    assert "| objective | k | train s | test log p(x) |" in md and "renyi:k=5,alpha=0.5" in md
    assert (tmp_path / "compare.csv").read_text().startswith("objective,k,train_seconds,log_px")
    for f in ("learning_curves.png", "log_px.png", "khat.png"):
        assert (tmp_path / f).stat().st_size > 1000
    assert (tmp_path / "iwae_k_5" / "checkpoint.pt").exists()


def test_compare_refuses_a_bad_spec_before_training(data, tmp_path):
    train, test = data
    with pytest.raises(ValueError, match="unknown objective 'iwea'"):
        pvae.compare({}, train, test, ["elbo", "iwea:k=5"], run_dir=tmp_path, progress=False)
    assert not (tmp_path / "elbo").exists()
