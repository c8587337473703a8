"""Learned priors, the VQ-VAE code prior, ex-post samplers and disentanglement (issue 17)."""

import math

import pytest
import torch

import pvae
from pvae.cli import main
from pvae.nn.code_prior import CodePrior
from pvae.analysis.disentangle import mig_score
from pvae.nn.priors import FlowPrior, MixturePrior
from pvae.analysis.samplers import GaussianMixture


# -- each prior's log-density by hand -------------------------------------------------------------
def test_mixture_prior_log_density_and_moments_by_hand():
    torch.manual_seed(0)
    p = MixturePrior(2, components=3)
    with torch.no_grad():
        p.logits.copy_(torch.tensor([0.0, 1.0, -1.0]))
        p.loc.copy_(torch.tensor([[0.0, 0.0], [3.0, -1.0], [-2.0, 2.0]]))
        p.raw_scale.copy_(torch.tensor([[0.0, 1.0], [-1.0, 0.5], [2.0, 0.0]]))
    d = p(torch.zeros(4, 2))
    z = torch.randn(5, 4, 2)
    w = torch.softmax(p.logits, 0)
    scale = torch.nn.functional.softplus(p.raw_scale) + 1e-4
    by_hand = torch.zeros(5, 4)
    for k in range(3):
        dens = torch.exp(-0.5 * ((z - p.loc[k]) / scale[k]) ** 2) / (scale[k] * math.sqrt(2 * math.pi))
        by_hand += w[k] * dens.prod(-1)
    torch.testing.assert_close(d.log_prob(z), by_hand.log(), rtol=1e-5, atol=1e-5)
    draws = d.sample((20000,)).reshape(-1, 2)
    mean = (w[:, None] * p.loc).sum(0)
    second = (w[:, None, None] * (torch.diag_embed(scale ** 2) + p.loc[:, :, None] * p.loc[:, None, :])).sum(0)
    torch.testing.assert_close(draws.mean(0), mean.detach(), atol=0.05, rtol=0)
    torch.testing.assert_close(torch.cov(draws.T), (second - mean[:, None] * mean[None]).detach(), atol=0.1, rtol=0)


def test_vamp_prior_is_the_guide_at_its_pseudo_inputs():
    torch.manual_seed(0)
    m = pvae.VAE(x_shape=(6,), latent_dim=2, hidden=(5,), prior="vamp", prior_components=4)
    u = m.p.pseudo_inputs()
    assert u.shape == (4, 6) and float(u.min()) >= 0 and float(u.max()) <= 1  # Bernoulli data: in [0, 1]
    q = m.posterior(u)  # four diagonal Gaussians
    z = torch.randn(7, 3, 2)
    by_hand = torch.logsumexp(torch.stack([dist_log_prob(q, k, z) for k in range(4)]), 0) - math.log(4)
    torch.testing.assert_close(m.prior(3).log_prob(z), by_hand, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        draws = m.prior(1).sample((40000,)).reshape(-1, 2)
        torch.testing.assert_close(draws.mean(0), q.mean.mean(0), atol=0.05, rtol=0)
        second = (q.variance + q.mean ** 2).mean(0)
        torch.testing.assert_close(draws.var(0), second - q.mean.mean(0) ** 2, atol=0.05, rtol=0.05)


def dist_log_prob(q, k, z):
    loc, scale = q.base_dist.loc[k], q.base_dist.scale[k]
    return (-0.5 * ((z - loc) / scale) ** 2 - scale.log() - 0.5 * math.log(2 * math.pi)).sum(-1)


def test_flow_prior_density_is_the_change_of_variables_with_an_autograd_jacobian():
    torch.manual_seed(0)
    p = FlowPrior(3, flow_steps=2)
    with torch.no_grad():  # move away from the identity it starts at
        for f in p.flows:
            for layer in f.arn.layers:
                layer.weight.normal_(0, 0.5)
    d = p(torch.zeros(1, 3))
    z = torch.randn(3)
    inverse = lambda y: y_to_eps(d, y)  # noqa: E731
    eps = inverse(z)
    jac = torch.autograd.functional.jacobian(inverse, z)
    by_hand = torch.distributions.Normal(0.0, 1.0).log_prob(eps).sum() + torch.linalg.slogdet(jac)[1]
    torch.testing.assert_close(d.log_prob(z[None])[0], by_hand, rtol=1e-4, atol=1e-4)
    x = d.sample()  # sampling (the sequential direction) and the density's pass invert each other
    back = y_to_eps(d, x)
    for t in d.transforms:
        back = t(back)
    torch.testing.assert_close(back, x, rtol=1e-4, atol=1e-4)


def y_to_eps(d, y):
    for t in reversed(d.transforms):
        y = t.inv(y)
    return y


def test_a_fresh_flow_prior_is_the_standard_normal():
    p = FlowPrior(4)
    z = torch.randn(10, 4)
    torch.testing.assert_close(p(torch.zeros(10, 4)).log_prob(z),
                               torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1), rtol=1e-5, atol=1e-5)


# -- priors inside models and objectives --------------------------------------------------------------
X = (torch.rand(40, 784) > 0.5).float()


@pytest.mark.parametrize("prior", ["mog", "vamp", "flow"])
def test_learned_priors_train_under_every_kind_of_objective_and_mf_elbo_refuses(prior, tmp_path):
    m = pvae.VAE(x_shape=(784,), latent_dim=3, hidden=(8,), prior=prior)
    for objective in ("elbo", "iwae:k=3", "renyi:k=3,alpha=0.5"):
        pvae.fit(m, X, objective=objective, epochs=1, batch_size=20, progress=False)
    with pytest.raises(ValueError, match="mf-elbo needs a closed-form KL"):
        pvae.fit(m, X, objective="mf-elbo", epochs=1, progress=False)
    learned = [n for n, _ in m.named_parameters() if n.startswith("p.")]
    assert learned, "the prior's parameters are the module's, trained and saved"
    pvae.save_checkpoint(tmp_path / "c.pt", m)
    again = pvae.load(tmp_path / "c.pt")
    torch.manual_seed(1)
    a = pvae.log_likelihood(m, X[:5], k=20, progress=False)
    torch.manual_seed(1)
    torch.testing.assert_close(pvae.log_likelihood(again, X[:5], k=20, progress=False), a)
    assert m.sample(3).shape == (3, 784)


def test_prior_options_are_checked():
    with pytest.raises(ValueError, match="unknown prior 'gauss'"):
        pvae.VAE(prior="gauss")
    with pytest.raises(ValueError, match="the VampPrior .* iaf guide"):
        pvae.VAE(prior="vamp", guide="iaf")
    with pytest.raises(ValueError, match="prior_components applies to the 'mog' and 'vamp' priors"):
        pvae.VAE(prior="flow", prior_components=3)
    with pytest.raises(ValueError, match="prior_components must be a positive integer"):
        pvae.VAE(prior="mog", prior_components=0)


@pytest.mark.parametrize("prior", ["mog", "vamp", "flow"])
def test_the_top_layer_of_a_hierarchical_vae_takes_a_prior(prior):
    m = pvae.HierarchicalVAE(latent_dims=(4, 2), hidden=((8,), (8,)), prior=prior)
    pvae.fit(m, X, objective="iwae:k=2", epochs=1, progress=False)
    assert torch.isfinite(pvae.log_likelihood(m, X[:4], k=5, progress=False)).all()


def test_a_learned_prior_does_not_lose_and_fits_the_aggregate_posterior_better():
    """Equal short budget on the embedded sample (2,000 images, 6 epochs): a mixture prior vs
    N(0, I). Measured here (k=200, 300 test images): log p(x) standard -286.0, mog -285.2 (flow
    -280.7, vamp -294.4: the VampPrior needs longer training); aggregate KL 10.3 vs 9.0."""
    train = pvae.load_dataset("fashion-mnist-sample", "train", binarize="dynamic", n=2000)
    test = pvae.load_dataset("fashion-mnist-sample", "test", binarize="dynamic", n=300)
    out = {}
    for prior in ("standard", "mog"):
        torch.manual_seed(0)
        m = pvae.VAE(x_shape=(1, 28, 28), latent_dim=16, hidden=(128,), prior=prior)
        pvae.fit(m, train, epochs=6, batch_size=50, progress=False)
        torch.manual_seed(0)
        out[prior] = (float(pvae.log_likelihood(m, test, k=200, progress=False).mean()), pvae.aggregate_kl(m, test))
    assert out["mog"][0] > out["standard"][0] - 1.0, out  # within 1 nat, or better
    assert out["mog"][1] < out["standard"][1], out


# -- the VQ-VAE's code prior ------------------------------------------------------------------------------
def test_the_code_prior_is_causal():
    torch.manual_seed(0)
    p = CodePrior(num_latents=5, num_codes=4, hidden=32)
    c = torch.randint(4, (3, 5))
    for i in range(5):
        changed = c.clone()
        changed[:, i] = (changed[:, i] + 1) % 4
        a, b = p.logits(c), p.logits(changed)
        torch.testing.assert_close(a[:, :i + 1], b[:, :i + 1])  # positions <= i never see code i
        if i < 4:
            assert not torch.allclose(a[:, i + 1:], b[:, i + 1:])  # later positions do


def test_vqvae_samples_after_its_code_prior_beats_the_uniform_one(tmp_path):
    train = pvae.load_dataset("fashion-mnist-sample", "train", binarize="dynamic", n=1000)
    test = pvae.load_dataset("fashion-mnist-sample", "test", binarize="static", n=200)
    torch.manual_seed(0)
    m = pvae.VQVAE(x_shape=(1, 28, 28), num_codes=32, code_dim=4, hidden=(128,), num_latents=6)
    pvae.fit(m, train, epochs=3, progress=False)
    with pytest.raises(ValueError, match="no learned code prior"):
        m.sample(2)
    r = pvae.fit_code_prior(m, train, test, epochs=5, progress=False)
    assert r["test_nll"] < r["uniform_nll"] - 3, r  # the uniform baseline is 6 log 32 = 20.8 nats
    s = m.sample(10)
    assert s.shape == (10, 1, 28, 28) and float(s.min()) >= 0 and float(s.max()) <= 1
    assert len({tuple(row) for row in m.code_prior.sample(50).tolist()}) > 5  # not one code row over and over
    pvae.save_checkpoint(tmp_path / "vq.pt", m)
    again = pvae.load(tmp_path / "vq.pt")
    codes = m.encode(test.eval_x()[:20])
    torch.testing.assert_close(again.code_prior.log_prob(codes), m.code_prior.log_prob(codes))


# -- ex-post samplers ---------------------------------------------------------------------------------------
def test_gaussian_mixture_em_recovers_a_known_mixture():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3000, 2, generator=g) * 0.3 + torch.tensor([2.0, 0.0])
    b = torch.randn(1000, 2, generator=g) * torch.tensor([0.2, 0.6]) + torch.tensor([-2.0, 1.0])
    gm = GaussianMixture(components=2, seed=0).fit(torch.cat([a, b]))
    order = gm.means[:, 0].argsort(descending=True)
    torch.testing.assert_close(gm.means[order].float(), torch.tensor([[2.0, 0.0], [-2.0, 1.0]]), atol=0.05, rtol=0)
    torch.testing.assert_close(gm.weights[order].float(), torch.tensor([0.75, 0.25]), atol=0.02, rtol=0)
    cov = gm.scale_tril[order[1]] @ gm.scale_tril[order[1]].T
    torch.testing.assert_close(cov.diagonal().float(), torch.tensor([0.04, 0.36]), atol=0.03, rtol=0)
    assert gm.log_likelihood == sorted(gm.log_likelihood)  # EM never decreases the likelihood


def test_an_autoencoder_generates_through_a_fitted_sampler(tmp_path, capsys):
    ae = pvae.AE(x_shape=(784,), latent_dim=4, hidden=(16,))
    pvae.fit(ae, X, epochs=2, progress=False)
    sampler = pvae.fit_sampler(ae, X, components=3)
    s = sampler.sample(6, seed=0)
    assert s.shape == (6, 784) and 0 <= float(s.min()) and float(s.max()) <= 1
    torch.testing.assert_close(sampler.sample(6, seed=0), s)
    with pytest.raises(ValueError, match="unknown sampler 'maf'"):
        pvae.fit_sampler(ae, X, kind="maf")
    with pytest.raises(ValueError, match="needs a model with a continuous latent"):
        pvae.fit_sampler(pvae.GumbelSoftmaxVAE(x_shape=(784,), num_vars=2, num_classes=3, hidden=(8,)), X)


# -- the shapes dataset and MIG ----------------------------------------------------------------------------
def test_shapes_are_every_factor_combination_deterministically():
    from pvae.data import shapes

    train, test = pvae.load_dataset("shapes", "train"), pvae.load_dataset("shapes", "test")
    assert len(train) + len(test) == 3 * 6 * 6 * 8 * 8 and train.x.shape[1:] == (1, 32, 32)
    rows = {tuple(r) for r in torch.cat([train.factors, test.factors]).tolist()}
    assert len(rows) == len(train) + len(test)
    assert torch.equal(pvae.load_dataset("shapes", "test").x, test.x)
    f = torch.tensor([[0, 5, 0, 0, 4], [0, 5, 0, 7, 4], [0, 0, 0, 7, 4]])
    img = shapes.render(f)[:, 0]
    cols = torch.arange(32).float()
    centre = (img.sum(1) * cols).sum(1) / img.sum((1, 2))
    assert centre[0] < 12 < 20 < centre[1]  # x moves the shape right
    assert img[2].sum() < img[1].sum() / 2  # a smaller scale, fewer pixels
    assert set(train.x.unique().tolist()) == {0.0, 1.0}


def test_mig_of_a_perfect_encoder_is_near_one_and_of_a_rotation_of_it_near_zero():
    test = pvae.load_dataset("shapes", "test")
    f = test.factors.float()
    perfect = f + 0.01 * torch.randn(f.shape, generator=torch.Generator().manual_seed(0))
    assert mig_score(perfect, test.factors)["mig"] > 0.9
    q, _ = torch.linalg.qr(torch.randn(5, 5, generator=torch.Generator().manual_seed(1)))
    rotated = (f - f.mean(0)) / f.std(0) @ q
    assert mig_score(rotated, test.factors)["mig"] < 0.2

    class Identity(torch.nn.Module):  # a model whose encoder is the hand-built one
        def encode(self, x):
            return perfect[:len(x)]

        @property
        def device(self):
            return torch.device("cpu")

    r = pvae.mig(Identity(), test)
    assert r["mig"] > 0.9 and r["best"] == {"shape": 0, "scale": 1, "rotation": 2, "x": 3, "y": 4}
    with pytest.raises(ValueError, match="MIG needs data with known factors"):
        pvae.mig(Identity(), pvae.load_dataset("fashion-mnist-sample", "test", n=10))


# -- the command line -------------------------------------------------------------------------------------------
def test_cli_learned_prior_vqvae_code_prior_and_gmm_sampler(tmp_path, capsys):
    tiny = ["--n-train", "300", "--n-test", "30", "--epochs", "1", "--hidden", "16", "--quiet"]
    assert main(["train", *tiny, "--latent-dim", "4", "--prior", "vamp", "--prior-components", "5", "--eval-k", "5",
                 "--run-dir", str(tmp_path / "vamp")]) == 0
    assert pvae.load(tmp_path / "vamp").config["prior"] == "vamp"
    assert main(["train", *tiny, "--model", "vqvae", "--latent-dim", "4", "--num-latents", "3",
                 "--code-prior-epochs", "2", "--eval-k", "5", "--run-dir", str(tmp_path / "vq")]) == 0
    out = capsys.readouterr().out
    assert "code prior: test NLL of the codes" in out and (tmp_path / "vq" / "samples.png").exists()
    assert main(["sample", str(tmp_path / "vq"), "--n", "4"]) == 0
    assert main(["train", *tiny, "--model", "ae", "--latent-dim", "4", "--eval-k", "0",
                 "--run-dir", str(tmp_path / "ae")]) == 0
    assert main(["sample", str(tmp_path / "ae"), "--n", "4"]) == 2
    assert "use --sampler gmm" in capsys.readouterr().err
    assert main(["sample", str(tmp_path / "ae"), "--n", "4", "--sampler", "gmm", "--components", "2"]) == 0
    assert (tmp_path / "ae" / "samples-n4-seed0-gmm.png").exists()
    assert main(["train", *tiny, "--model", "gumbel", "--prior", "mog", "--run-dir", str(tmp_path / "g")]) == 2
