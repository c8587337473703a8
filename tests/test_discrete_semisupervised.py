"""Gumbel-softmax VAE, semi-supervised M2 and the structured-output CVAE: bounds against
hand computations and exact enumerations, and short trainings that must learn."""

import itertools
import math

import pyro
import pytest
import torch
from torch.nn import functional as F

import pvae
from pvae.data.datasets import semi_supervised
from pvae.models.discrete import GumbelSoftmax
from pvae.models.structured import quadrant_mask


def binary_data(n=300, d=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    proto = (torch.rand(3, d, generator=g) > 0.5).float()
    y = torch.randint(0, 3, (n,), generator=g)
    flip = torch.rand(n, d, generator=g) < 0.1
    return torch.where(flip, 1 - proto[y], proto[y]), y


# -- Gumbel-softmax ---------------------------------------------------------------------------------
def test_gumbel_softmax_densities_and_kl():
    logits = torch.randn(4, 3, 5)
    q, p = GumbelSoftmax(logits, 0.7), GumbelSoftmax(torch.zeros(4, 3, 5), 0.7)
    c = torch.distributions.Categorical(logits=logits)
    k = c.sample()
    assert torch.allclose(q.log_prob(F.one_hot(k, 5).float()), c.log_prob(k).sum(-1), atol=1e-5)
    pi = logits.softmax(-1)
    assert torch.allclose(torch.distributions.kl_divergence(q, p), (pi * (pi * 5).log()).sum((-2, -1)), atol=1e-5)
    y = q.rsample()
    assert torch.allclose(y.sum(-1), torch.ones(4, 3)) and not bool(((y == 0) | (y == 1)).all())  # relaxed
    h = GumbelSoftmax(logits, 0.0).sample((2,))
    assert h.shape == (2, 4, 3, 5) and bool(((h == 0) | (h == 1)).all()) and bool((h.sum(-1) == 1).all())


def test_gumbel_log_likelihood_converges_to_exact_enumeration():
    """In eval mode the IS estimate is of the discrete model: N=2 variables of K=3 classes give
    9 codes, and log p(x) = logsumexp_c [log p(c) + log p(x|c)] exactly."""
    torch.manual_seed(0)
    x, _ = binary_data(20, 12)
    m = pvae.GumbelSoftmaxVAE(x_shape=(12,), num_vars=2, num_classes=3, hidden=(16,))
    m.eval()
    codes = torch.tensor(list(itertools.product(range(3), repeat=2)))  # (9, 2)
    onehot = F.one_hot(codes, 3).float()
    log_px_c = m.likelihood(m.decoder_params(onehot[:, None])).log_prob(x)  # (9, n)
    exact = torch.logsumexp(log_px_c + math.log(1 / 9), 0)
    est = pvae.log_likelihood(m, x, k=3000, progress=False)
    assert torch.allclose(est, exact, atol=0.03), (est - exact).abs().max()


def test_gumbel_temperature_anneals_during_fit_and_kl_is_not_collapsed():
    x, _ = binary_data(300, 12)
    torch.manual_seed(0)
    m = pvae.GumbelSoftmaxVAE(x_shape=(12,), num_vars=4, num_classes=4, hidden=(32,), temperature=1.0,
                              min_temperature=0.5, anneal_rate=0.003)
    before = pvae.evaluate(m, x, k=50, progress=False)["summary"]
    h = pvae.fit(m, x, "mf-elbo", epochs=15, batch_size=20, lr=3e-3, progress=False)
    steps = 15 * 15
    assert m.temperature == pytest.approx(max(0.5, math.exp(-0.003 * (steps - 1))))
    assert m.temperature > 0.5  # still annealing: the schedule, not the floor, set it
    after = pvae.evaluate(m, x, k=50, progress=False)["summary"]
    assert after["log_px"] > before["log_px"] + 1.0
    assert after["kl"] > 0.5  # the code carries information about x
    assert h[-1]["train_loss"] < h[0]["train_loss"]


def test_gumbel_bad_arguments():
    with pytest.raises(ValueError, match="min_temperature"):
        pvae.GumbelSoftmaxVAE(temperature=0.5, min_temperature=1.0)
    with pytest.raises(ValueError, match="num_classes"):
        pvae.GumbelSoftmaxVAE(num_classes=1)


# -- M2 ---------------------------------------------------------------------------------------------
def test_semi_supervised_keeps_balanced_labels_and_repeats_them():
    x, y = binary_data(600, 12)
    d = semi_supervised((x, y), 30, labelled_share=0.2, seed=1)
    known = d.y >= 0
    assert int((~known).sum()) == 570
    labels, counts = d.y[known].unique(return_counts=True)
    assert labels.tolist() == [0, 1, 2] and len(set(counts.tolist())) == 1
    assert abs(float(known.float().mean()) - 0.2) < 0.02
    with pytest.raises(ValueError, match="multiple of the 3 classes"):
        semi_supervised((x, y), 10)


def test_m2_log_likelihoods_match_numerical_integration():
    """log p(x, y) (label known) and log p(x) (label unknown: y drawn from q(y|x) too) against
    a grid integral over the 2-d z: p(x, y) = (1/C) integral N(z; 0, I) p(x | y, z) dz."""
    torch.manual_seed(0)
    x, _ = binary_data(10, 12)
    m = pvae.SemiSupervisedVAE(x_shape=(12,), num_classes=3, latent_dim=2, hidden=(16,))
    with torch.no_grad():  # q(z|x,y) = N(0, 1.7^2), wider than the posterior: well-behaved weights
        m.q.linear.weight.zero_()
        m.q.linear.bias.copy_(torch.tensor([0.0, 0.0, 1.5, 1.5]))
        m.classifier.net[-1].weight.zero_()  # q(y|x) uniform: the marginal's label proposal is p(y)
    m.eval()
    g = torch.linspace(-6, 6, 241)
    z = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 1, 2)
    with torch.no_grad():
        exact = torch.stack([
            (m.likelihood(m.decoder_params(z, F.one_hot(torch.tensor(c), 3).float().expand(z.shape[0], 1, 3)))
             .log_prob(x) + torch.distributions.Normal(0, 1).log_prob(z).sum(-1)).logsumexp(0)
            + 2 * math.log(g[1] - g[0]) - math.log(3) for c in range(3)])
    pyro.set_rng_seed(0)
    for c in range(3):
        joint = pvae.log_likelihood(m, (x, torch.full((10,), c)), k=5000, progress=False)
        assert torch.allclose(joint, exact[c], atol=0.03), (c, (joint - exact[c]).abs().max())
    marginal = pvae.log_likelihood(m, (x, torch.full((10,), -1)), k=20000, progress=False)  # y drawn too
    assert torch.allclose(marginal, exact.logsumexp(0), atol=0.03), (marginal - exact.logsumexp(0)).abs().max()


def test_m2_enumerated_bound_equals_hand_sum_over_labels():
    """TraceEnum_ELBO on unlabelled data: sum_y q(y|x) [log p(x|y,z_y) + log p(y) + log p(z_y) -
    log q(z_y|x,y)] - sum_y q(y|x) log q(y|x), with the same z draws."""
    torch.manual_seed(0)
    x, _ = binary_data(5, 12)
    m = pvae.SemiSupervisedVAE(x_shape=(12,), num_classes=3, latent_dim=2, hidden=(16,), classifier_weight=0)
    elbo = pvae.objective("enum-elbo")
    elbo.max_plate_nesting = 1
    y = torch.full((5,), -1)
    pyro.set_rng_seed(3)
    loss = elbo.loss(m.model, m.guide, x, y)
    pyro.set_rng_seed(3)
    eps = torch.randn(3, 5, 2)  # the guide's one reparameterized draw, one per enumerated label
    e = torch.eye(3)[:, None].expand(3, 5, 3)
    q = m.q(m.encoder(torch.cat([x.expand(3, 5, 12), e], -1)))
    z = q.base_dist.loc + q.base_dist.scale * eps
    log_w = (m.likelihood(m.decoder_params(z, e)).log_prob(x) + math.log(1 / 3)
             + torch.distributions.Normal(0, 1).log_prob(z).sum(-1) - q.log_prob(z))
    log_qy = m.classifier(x).log_softmax(-1).T  # (3, 5)
    hand = (log_qy.exp() * (log_w - log_qy)).sum()
    assert loss == pytest.approx(-float(hand.detach()), rel=1e-5)


def test_m2_labels_minus_one_only_where_allowed():
    x, y = binary_data(20, 12)
    with pytest.raises(ValueError, match="outside the 3 classes"):
        pvae.fit(pvae.ConditionalVAE(x_shape=(12,), num_classes=3, hidden=(8,)), (x, torch.full((20,), -1)),
                 epochs=1, progress=False)
    h = pvae.fit(pvae.SemiSupervisedVAE(x_shape=(12,), num_classes=3, hidden=(8,)), (x, torch.full((20,), -1)),
                 "enum-elbo", epochs=1, progress=False)
    assert math.isfinite(h[-1]["train_loss"])


@pytest.mark.slow
def test_m2_classifier_learns_from_few_labels():
    train = pvae.load_dataset("fashion-mnist-sample", "train", binarize="dynamic", n=2000)
    test = pvae.load_dataset("fashion-mnist-sample", "test", n=500)
    torch.manual_seed(0)
    m = pvae.SemiSupervisedVAE(hidden=(128,), latent_dim=16)
    pvae.fit(m, semi_supervised(train, 100), "enum-elbo", epochs=2, progress=False)
    assert m.accuracy(test.x, test.y) > 0.45  # chance: 0.1


# -- structured output CVAE ---------------------------------------------------------------------------
def test_quadrant_masks():
    m = quadrant_mask(28, 28, (2,))
    assert int(m.sum()) == 196 and bool(m[14:, :14].all()) and not bool(m[:14].any())
    assert int(quadrant_mask(28, 28, (1, 2, 3)).sum()) == 3 * 196
    with pytest.raises(ValueError, match="numbered 0..3"):
        quadrant_mask(28, 28, (4,))


def test_baseline_log_likelihood_is_exact_conditional():
    torch.manual_seed(0)
    x = torch.bernoulli(torch.rand(6, 16))
    m = pvae.StructuredCVAE(x_shape=(16,), visible=2, latent_dim=0, hidden=(8,))  # 4x4 images, bottom half seen
    v, h = x[:, 8:], x[:, :8]
    hand = -F.binary_cross_entropy_with_logits(m.decoder(v), h, reduction="none").sum(-1)
    assert torch.allclose(pvae.log_likelihood(m, x, k=1, progress=False), hand, atol=1e-5)


def test_cvae_bound_scores_only_the_hidden_part_and_completion_keeps_the_visible():
    torch.manual_seed(0)
    x = torch.bernoulli(torch.rand(6, 16))
    m = pvae.StructuredCVAE(x_shape=(16,), visible=1, latent_dim=3, hidden=(8,))
    terms = pvae.log_weight_terms(m.model, m.guide, x, num_particles=4)
    v, h = m.split(x)
    assert v.shape == (6, 4) and h.shape == (6, 12)
    x2 = x.clone()
    x2[:, m.vis_idx] = 1 - x2[:, m.vis_idx]  # the visible part is conditioned on, not scored
    torch.manual_seed(1)
    out = m.complete(x, num_samples=3)
    torch.manual_seed(1)
    out_h = m.complete(torch.where(m.visible_mask, x, 1 - x), num_samples=3)  # other hidden values
    assert torch.equal(out[..., m.vis_idx], x[:, m.vis_idx].expand(3, 6, 4))
    assert torch.allclose(out, out_h)  # the completion never reads the hidden values
    assert terms.log_px_z.shape == (4, 6)


@pytest.mark.slow
def test_cvae_beats_the_baseline_on_quadrant_completion():
    train = pvae.load_dataset("fashion-mnist-sample", "train", binarize="dynamic", n=3000)
    test = pvae.load_dataset("fashion-mnist-sample", "test", binarize="dynamic", n=300)
    ll = {}
    for D in (0, 16):
        torch.manual_seed(0)
        m = pvae.StructuredCVAE(visible=1, latent_dim=D, hidden=(128,))
        pvae.fit(m, train, epochs=4, lr=2e-3, progress=False)
        ll[D] = float(pvae.log_likelihood(m, test, k=200 if D else 1, progress=False).mean())
    assert ll[16] > ll[0] + 3.0, ll


def test_importance_weighted_objectives_refuse_a_discrete_guide_site():
    x, y = binary_data(20, 12)
    m = pvae.SemiSupervisedVAE(x_shape=(12,), num_classes=3, hidden=(8,))
    with pytest.raises(ValueError, match="needs reparameterized latents, and the guide's site 'y'"):
        pvae.fit(m, (x, torch.full((20,), -1)), "iwae:k=3", epochs=1, progress=False)
    m.eval()  # evaluation needs no gradient: importance sampling over y is fine
    assert torch.isfinite(pvae.log_likelihood(m, (x, torch.full((20,), -1)), k=10, progress=False)).all()
