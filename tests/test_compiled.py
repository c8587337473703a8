"""The compiled SVI step (compile="step"): the traced step is the eager step, draws stay fresh,
and what cannot be traced stays eager with one line."""

import pyro
import pyro.distributions as dist
import pytest
import torch

import pvae
from pvae.compiled import CompiledStep, PerDatapointELBO

X = (torch.rand(50, 784, generator=torch.Generator().manual_seed(0)) > 0.5).float()


def vae(**kw):
    torch.manual_seed(0)
    return pvae.VAE(**{**dict(x_shape=(784,), latent_dim=4, hidden=(16,)), **kw})


def eager_step(m, elbo, x):
    for p in m.parameters():
        p.grad = None
    loss = elbo.differentiable_loss(m.model, m.guide, x)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in m.parameters()]


@pytest.mark.parametrize("objective", ["elbo", "iwae:k=3", "renyi:k=3,alpha=0.5", "miwae:k=4,M=2"])
def test_the_traced_step_is_the_eager_step_bit_for_bit_and_draws_afresh(objective):
    m = vae(beta=2.0)
    params = list(m.parameters())
    elbo = pvae.objective(objective)
    step = CompiledStep(m, elbo, params, fallback=None, compile_graph=False, say=pytest.fail)
    torch.manual_seed(1)
    loss = step(X[:10])
    grads = [p.grad.clone() for p in params]
    assert step.graphs and all(g is not None for g in step.graphs.values())
    torch.manual_seed(1)
    eager_loss, eager_grads = eager_step(m, step.elbo, X[:10])
    assert torch.equal(loss, eager_loss) and all(torch.equal(a, b) for a, b in zip(grads, eager_grads))
    assert not torch.equal(step(X[:10]), step(X[:10]))  # random ops in the graph: fresh draws every call


def test_the_per_datapoint_elbo_is_trace_elbo():
    m = vae(beta=0.5)
    torch.manual_seed(3)
    a = pyro.infer.Trace_ELBO().differentiable_loss(m.model, m.guide, X[:10])
    torch.manual_seed(3)
    b = PerDatapointELBO().differentiable_loss(m.model, m.guide, X[:10])
    torch.testing.assert_close(a, b)


def test_a_compiled_run_trains_like_the_eager_one_with_a_graph_per_batch_shape():
    h = {}
    for compile in (False, "step"):
        m = vae()
        h[compile] = pvae.fit(m, X, epochs=4, batch_size=20, lr=1e-2, compile=compile, test=X, seed=0, progress=False)
    eager, compiled = h[False][-1]["test_elbo"], h["step"][-1]["test_elbo"]
    assert compiled > h["step"][0]["test_elbo"]  # it learns
    assert abs(compiled - eager) < 0.02 * abs(eager), (eager, compiled)  # as the eager run does


def test_what_cannot_be_traced_stays_eager_with_one_line():
    with pytest.warns(UserWarning, match="compile='step': the step stays eager: KL warm-up"):
        pvae.fit(vae(), X, epochs=1, warmup_epochs=1, compile="step", progress=False)
    with pytest.warns(UserWarning, match="the model anneals a value every step"):
        pvae.fit(pvae.GumbelSoftmaxVAE(x_shape=(784,), num_vars=2, num_classes=3, hidden=(8,)), X, epochs=1,
                 compile="step", progress=False)

    def model(x):
        w = pyro.param("w", torch.zeros(784))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Bernoulli(logits=w).to_event(1), obs=x)

    def guide(x):
        pass

    pyro.clear_param_store()
    with pytest.warns(UserWarning, match="parameters in Pyro's param store"):
        pvae.fit(model, X, guide=guide, epochs=1, compile="step", progress=False)
    with pytest.raises(ValueError, match="compile must be False, True .* or 'step'"):
        pvae.fit(vae(), X, compile="yes", progress=False)


def test_denormals_are_flushed_while_training_and_restored_after(monkeypatch):
    import sys

    seen = []
    module = sys.modules["pvae.train"]
    real = module._train_epoch

    def spy(*a, **k):
        seen.append(float(torch.tensor([1e-39]) * 1.0))
        return real(*a, **k)

    monkeypatch.setattr(module, "_train_epoch", spy)
    pvae.fit(vae(), X, epochs=1, progress=False)
    assert seen == [0.0]  # flushed inside training
    assert float(torch.tensor([1e-39]) * 1.0) != 0.0  # restored
    pvae.fit(vae(), X, epochs=1, progress=False, flush_denormal=False)
    assert seen[-1] != 0.0


def test_the_command_line_trains_with_a_compiled_step(tmp_path):
    from pvae.cli import main

    assert main(["train", "--n-train", "200", "--n-test", "20", "--epochs", "2", "--hidden", "16", "--latent-dim", "4",
                 "--eval-k", "0", "--quiet", "--compile-step", "--run-dir", str(tmp_path / "r")]) == 0
    assert pvae.load_checkpoint(tmp_path / "r")["fit_config"]["compile"] == "step"


@pytest.mark.parametrize("model", [pvae.AE(x_shape=(784,), latent_dim=3, hidden=(8,)),
                                   pvae.VQVAE(x_shape=(784,), num_codes=4, code_dim=2, hidden=(8,))])
def test_point_mass_log_densities_follow_their_values_device(model):
    """Issue 20's CUDA failure of AE and VQ-VAE ("cuda:0 and cpu" in the log-weight terms): Pyro's
    ImproperUniform prior answers on the CPU whatever the value's device. Checked on CPU with the
    meta device standing in for a GPU."""
    from pyro import poutine

    from pvae.program import _per_datapoint

    guide = poutine.trace(model.guide).get_trace(X[:5])
    site = poutine.trace(poutine.replay(model.model, trace=guide)).get_trace(X[:5]).nodes["z"]
    site = {**site, "value": site["value"].detach().to("meta")}
    assert _per_datapoint(site, num_dims=2, data_plate="data", particle=False).device.type == "meta"
