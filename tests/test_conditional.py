"""The conditional VAE: labels through the trainer and evaluator, and class-conditional generation."""

import pytest
import torch

import pvae


@pytest.fixture(scope="module")
def sample():
    return (pvae.load_dataset("sample", "train", binarize="static"),
            pvae.load_dataset("sample", "test", binarize="static", n=200))


def small(**kw):
    torch.manual_seed(0)
    return pvae.ConditionalVAE(**{**dict(num_classes=10, latent_dim=4, hidden=(64,)), **kw})


def test_labels_reach_model_and_guide_as_integers_or_one_hot(sample):
    _, test = sample
    m = small()
    x, y = test.x.reshape(200, -1), test.y
    torch.manual_seed(1)
    a = pvae.log_likelihood(m, (x, y), k=20, progress=False)
    torch.manual_seed(1)
    b = pvae.log_likelihood(m, x, k=20, labels=torch.nn.functional.one_hot(y, 10).float(), progress=False)
    torch.testing.assert_close(a, b)
    torch.manual_seed(1)
    c = pvae.log_likelihood(m, x, k=20, labels=(y + 1) % 10, progress=False)  # other labels, other values
    assert not torch.allclose(a, c)
    s = pvae.evaluate(m, test, k=20, progress=False)["summary"]  # Data carries its labels
    assert s["n"] == 200 and s["active_units"] <= 4


@pytest.mark.parametrize("labels, message", [
    (None, "ConditionalVAE needs labels for the training data"),
    (torch.full((50,), 10), r"labels of the training data lie in \[10, 10\], outside the 10 classes \[0, 9\]"),
    (torch.zeros(50, 3), "one-hot labels of the training data have 3 columns, not 10"),
    (torch.full((50,), 0.5), "must be integers or one-hot rows"),
])
def test_bad_labels(labels, message):
    with pytest.raises(ValueError, match=message):
        pvae.fit(small(), torch.rand(50, 784).round(), labels=labels, epochs=1, progress=False)


def test_class_conditional_generation_follows_the_label(sample):
    train, _ = sample
    m = small(prior="learned")
    h = pvae.fit(m, train, epochs=10, lr=2e-3, progress=False)
    assert h[-1]["train_loss"] < h[0]["train_loss"]
    torch.manual_seed(1)
    generated = m.sample(200)  # classes 0..9 in turn
    x = train.x.reshape(-1, 784)
    means = torch.stack([x[train.y == c].mean(0) for c in range(10)])
    accuracy = (torch.cdist(generated, means).argmin(1) == torch.arange(200) % 10).float().mean()
    # nearest class mean in pixel space: 70% on real training images, chance is 10%; measured 36%
    assert accuracy > 0.25, accuracy
    assert m.sample(5, y=3).shape == (5, 784)


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_classes=1), "num_classes must be an integer >= 2"),
    (dict(prior="uniform"), "unknown prior 'uniform'"),
    (dict(prior="learned", guide="fullcov"), "a learned class prior is diagonal"),
])
def test_bad_conditional_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        small(**kwargs)
