"""Applications: anomaly detection by -log p(x) with one class held out of training."""

import pytest
import torch

import pvae


def test_auroc_against_its_definition():
    scores = torch.tensor([0.1, 0.4, 0.35, 0.8, 0.4])
    labels = torch.tensor([False, False, True, True, True])
    # pairs (anomaly > normal): 0.35>0.1, 0.8>0.1, 0.8>0.4, 0.4>0.1, 0.4=0.4 (half) -> 4.5 of 6
    assert pvae.auroc(scores, labels) == pytest.approx(4.5 / 6)
    assert pvae.auroc(torch.arange(10.0), torch.arange(10) >= 5) == 1.0
    with pytest.raises(ValueError, match="at least one anomaly and one normal"):
        pvae.auroc(torch.ones(3), torch.zeros(3, dtype=torch.bool))


def test_held_out_class_is_flagged_as_anomalous():
    train = pvae.load_dataset("sample", "train", binarize="static")
    test = pvae.load_dataset("sample", "test", binarize="static")
    held_out = 8  # bag
    torch.manual_seed(0)
    m = pvae.VAE(latent_dim=16, hidden=(256,))
    pvae.fit(m, train.x[train.y != held_out], epochs=10, lr=2e-3, progress=False)
    scores = pvae.anomaly_scores(m, test, k=100, progress=False)
    auc = pvae.auroc(scores, test.y == held_out)
    assert auc > 0.7, auc  # measured 0.81
