"""The VAE's model/guide contract: sites in the data plate, particle broadcasting, methods."""

import pytest
import torch
from pyro import poutine

import pvae

CASES = [
    dict(x_shape=(784,), net="mlp"),
    dict(x_shape=(1, 28, 28), net="mlp"),
    dict(x_shape=(1, 28, 28), net="conv", hidden=(32,)),
    dict(x_shape=(3, 32, 32), net="conv", hidden=(32,)),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c['net']}-{'x'.join(map(str, c['x_shape']))}")
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian", "continuous-bernoulli"])
def test_sites_sit_in_the_data_plate_and_particles_broadcast(case, likelihood):
    case = dict(hidden=(16,), **case) if "hidden" not in case else case
    m = pvae.VAE(latent_dim=3, likelihood=likelihood, **case)
    x = torch.rand((5,) + case["x_shape"])
    guide_tr = poutine.trace(m.guide).get_trace(x)
    model_tr = poutine.trace(poutine.replay(m.model, trace=guide_tr)).get_trace(x)
    for tr, names in ((guide_tr, ["z"]), (model_tr, ["z", "x"])):
        for name in names:
            site = tr.nodes[name]
            assert [f.name for f in site["cond_indep_stack"]] == ["data"]
            assert site["fn"].batch_shape == (5,)
    assert model_tr.nodes["x"]["fn"].event_shape == case["x_shape"]
    assert model_tr.nodes["x"]["is_observed"]
    # k particles in one pass: the decoder broadcasts over the leading particle dim
    t = pvae.log_weight_terms(m.model, m.guide, x, num_particles=4)
    for term in (t.log_px_z, t.log_pz, t.log_qz):
        assert term.shape == (4, 5) and torch.isfinite(term).all()


def test_methods_users_expect():
    m = pvae.VAE(x_shape=(1, 28, 28), latent_dim=4, hidden=(32,), net="conv")
    x = torch.rand(6, 1, 28, 28)
    assert m.encode(x).shape == (6, 4)
    assert m.decode(torch.zeros(2, 3, 4)).shape == (2, 3, 1, 28, 28)  # any leading dims
    r = m.reconstruct(x)
    assert r.shape == x.shape and ((r >= 0) & (r <= 1)).all()
    assert m.sample(7).shape == (7, 1, 28, 28)
    draws = m.sample(7, mean=False)
    assert set(draws.unique().tolist()) <= {0.0, 1.0}  # Bernoulli draws
    # the model generates when given no data
    assert m.model(n=3).shape == (3, 1, 28, 28)


def test_gaussian_likelihood_fixed_or_learned_scale():
    learned = pvae.VAE(x_shape=(10,), latent_dim=2, hidden=(8,), likelihood="gaussian")
    fixed = pvae.VAE(x_shape=(10,), latent_dim=2, hidden=(8,), likelihood="gaussian", likelihood_scale=0.1)
    assert any(n.startswith("likelihood.raw_scale") for n, _ in learned.named_parameters())
    assert not any(n.startswith("likelihood") for n, _ in fixed.named_parameters())
    out = fixed.decoder_params(torch.zeros(1, 2))
    assert torch.allclose(fixed.likelihood(out).base_dist.scale, torch.tensor(0.1))


def test_beta_scales_z_in_model_and_guide():
    m = pvae.VAE(x_shape=(6,), latent_dim=2, hidden=(4,), beta=4.0)
    x = torch.rand(3, 6)
    g = poutine.trace(m.guide).get_trace(x)
    mt = poutine.trace(poutine.replay(m.model, trace=g)).get_trace(x)
    assert g.nodes["z"]["scale"] == 4.0 and mt.nodes["z"]["scale"] == 4.0 and mt.nodes["x"]["scale"] == 1.0
    with pvae.scale_latents(scale=0.5):  # warm-up multiplies on top of beta, latents only
        g2 = poutine.trace(m.guide).get_trace(x)
        mt2 = poutine.trace(poutine.replay(m.model, trace=g2)).get_trace(x)
    assert g2.nodes["z"]["scale"] == 2.0 and mt2.nodes["z"]["scale"] == 2.0 and mt2.nodes["x"]["scale"] == 1.0


@pytest.mark.parametrize("kwargs, message", [
    (dict(beta=0.0), "beta must be > 0"),
    (dict(latent_dim=0), "latent_dim must be a positive integer"),
    (dict(hidden=()), "hidden must be a non-empty tuple"),
    (dict(likelihood="poisson"), "unknown likelihood 'poisson'; choose one of"),
    (dict(guide="flows"), "unknown guide family 'flows'; choose one of"),
    (dict(net="rnn"), "unknown net 'rnn'"),
    (dict(net="conv", x_shape=(784,)), r"conv nets take x_shape \(C, 28, 28\) or \(C, 32, 32\)"),
    (dict(activation="swish2"), "unknown activation 'swish2'"),
    (dict(likelihood="bernoulli", likelihood_scale=0.1), "likelihood_scale only applies to the gaussian"),
])
def test_bad_constructor_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        pvae.VAE(**{**dict(x_shape=(784,), latent_dim=2, hidden=(8,)), **kwargs})


def test_bf16_nets_keep_log_densities_in_float32_and_the_bound_close():
    torch.manual_seed(0)
    m = pvae.VAE(x_shape=(784,), latent_dim=8, hidden=(64,))
    x = pvae.load_dataset("sample", "test", binarize="static", n=100).x.reshape(100, -1)
    torch.manual_seed(1)
    ref = pvae.log_likelihood(m, x, k=50, progress=False)
    pvae.nn.nets.accelerate(m, "bf16")
    t = pvae.log_weight_terms(m.model, m.guide, x, num_particles=2)
    assert t.log_px_z.dtype == torch.float32 and t.log_qz.dtype == torch.float32
    torch.manual_seed(1)
    low = pvae.log_likelihood(m, x, k=50, progress=False)
    # the nets' arithmetic in bfloat16 moves log p(x) by well under 0.1% here
    assert float((low - ref).abs().mean()) < 0.1 and float((low - ref).abs().max()) < 1.0
    pvae.nn.nets.accelerate(m, "fp32")
    torch.manual_seed(1)
    torch.testing.assert_close(pvae.log_likelihood(m, x, k=50, progress=False), ref)
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        pvae.nn.nets.accelerate(m, "fp8")


@pytest.mark.slow
def test_compiled_nets_train_and_keep_their_state_dict_keys():
    torch.manual_seed(0)
    m = pvae.VAE(x_shape=(784,), latent_dim=4, hidden=(32,))
    keys = list(m.state_dict())
    h = pvae.fit(m, torch.rand(200, 784).round(), epochs=2, batch_size=100, compile=True, progress=False)
    assert list(m.state_dict()) == keys and h[-1]["train_loss"] < h[0]["train_loss"]
