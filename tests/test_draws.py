"""Dynamic binarization's counter-based draws (pvae.data.draws): SplitMix64 bit for bit, uniform and
independent in the statistics a binarization depends on, the same eagerly and inside the compiled
step's graph, and fresh for every batch and epoch."""

import math
import warnings

import pytest
import torch

import pvae
from pvae.data.draws import GAMMA, MIX1, MIX2, DynamicDraws, bernoulli, mix, signed, state_at, uniform
from pvae.infer.compiled import CompiledStep

M64 = (1 << 64) - 1


def splitmix64(seed: int, n: int) -> list:
    """Vigna's splitmix64.c, in Python integers."""
    out, s = [], seed & M64
    for _ in range(n):
        s = (s + GAMMA) & M64
        z = ((s ^ (s >> 30)) * MIX1) & M64
        z = ((z ^ (z >> 27)) * MIX2) & M64
        out.append(z ^ (z >> 31))
    return out


def draws_of(seed: int, counter: int, n: int) -> list:
    c = torch.arange(n, dtype=torch.int64)
    return [v & M64 for v in mix(torch.tensor(state_at(seed, counter)) + c * signed(GAMMA)).tolist()]


def test_the_stream_is_splitmix64_bit_for_bit():
    # the published first outputs of splitmix64 seeded with 1234567
    assert draws_of(1234567, 0, 5) == [6457827717110365317, 3203168211198807973, 9817491932198370423,
                                       4593380528125082431, 16408922859458223821]
    # any counter, seeds near the int64 limits (the states wrap modulo 2^64)
    for seed in (0, (1 << 63) - 1, -(1 << 63), -1, 0xDEADBEEFCAFEF00D):
        assert draws_of(seed, 1000, 300) == splitmix64(seed, 1300)[1000:]
    # a uniform is the draw's top 24 bits
    u = uniform((3, 4), torch.tensor(state_at(7, 0)))
    assert u.dtype == torch.float32 and u.shape == (3, 4)
    assert [int(v * 2 ** 24) for v in u.flatten().tolist()] == [z >> 40 for z in splitmix64(7, 12)]


def test_the_uniforms_are_uniform_and_the_bits_independent():
    u = uniform((1 << 20,), torch.tensor(state_at(2026, 5)))
    # 64 equal bins: chi-square with 63 degrees of freedom (mean 63, sd 11.2); 6 sd either side
    counts = torch.bincount((u * 64).long(), minlength=64).double()
    chi2 = float(((counts - counts.mean()) ** 2 / counts.mean()).sum())
    assert 63 - 6 * 11.2 < chi2 < 63 + 6 * 11.2, chi2
    n = u.numel()
    assert abs(float(u.mean()) - 0.5) < 6 * math.sqrt(1 / 12 / n)
    # neighbours in the stream (next pixel, the next row of 784) are uncorrelated
    for lag in (1, 784):
        r = float(torch.corrcoef(torch.stack([u[:-lag], u[lag:]]))[0, 1])
        assert abs(r) < 6 / math.sqrt(n), (lag, r)


@pytest.mark.parametrize("p", [0.0, 0.03, 0.5, 0.9, 1.0])
def test_a_pixel_is_one_with_its_grey_value_as_probability(p):
    n = 400_000
    x = bernoulli(torch.full((n,), p), torch.tensor(state_at(11, 0)))
    assert set(x.unique().tolist()) <= {0.0, 1.0} and x.dtype == torch.float32
    assert abs(float(x.mean()) - p) <= 6 * math.sqrt(p * (1 - p) / n)


def test_the_eager_draw_is_the_graph_draw_and_each_batch_and_epoch_draws_afresh():
    torch.manual_seed(0)
    grey = torch.rand(30, 784)
    d = DynamicDraws("cpu")
    d.new_epoch()
    seen = []
    for step in range(3):
        d.at(step, grey.numel(), grey)
        seen.append(d(grey))
        assert torch.equal(seen[-1], bernoulli(grey, d.start))  # in place, eagerly, as in the graph
    d.at(0, grey.numel(), grey)
    assert torch.equal(d(grey), seen[0])  # a counter, not a state: step 0 again draws step 0's values
    d.at(1, grey.numel(), grey[:7])  # a smaller batch at step 1 draws the first rows of step 1's values
    assert torch.equal(d(grey[:7]), seen[1][:7])
    d.new_epoch()
    d.at(0, grey.numel(), grey)
    seen.append(d(grey))
    for i in range(len(seen)):
        for j in range(i):  # about 25% of the pixels differ between two draws of the same grey batch
            assert 0.15 < float((seen[i] != seen[j]).float().mean()) < 0.35


def test_the_compiled_step_draws_inside_its_graph_what_the_eager_step_draws():
    """The grey batch goes in, the graph binarizes it from the draws' counter (int64 products that
    wrap): loss and gradients equal the eager step's on the eagerly drawn batch, bit for bit."""
    torch.manual_seed(0)
    grey = torch.rand(20, 784)
    m = pvae.VAE(x_shape=(784,), latent_dim=4, hidden=(16,))
    params = list(m.parameters())
    elbo = pvae.objective("elbo")
    d = DynamicDraws("cpu")
    d.new_epoch()
    step = CompiledStep(m, elbo, params, fallback=None, say=pytest.fail, draws=d)
    assert step.draws_inside
    for s in range(2):
        d.at(s, grey.numel(), grey)
        torch.manual_seed(5)
        loss = step(grey)
        grads = [p.grad.clone() for p in params]
        assert [k[-1] for k in step.graphs] == [0]  # one graph, binarizing input 0
        binary = d(grey)
        torch.manual_seed(5)
        for p in params:
            p.grad = None
        eager = step.elbo.differentiable_loss(m.model, m.guide, binary)
        eager.backward()
        torch.testing.assert_close(loss, eager.detach(), rtol=1e-5, atol=1e-4)
        for a, p in zip(grads, params):
            torch.testing.assert_close(a, p.grad, rtol=1e-4, atol=1e-5)


def test_a_run_trains_on_the_same_draws_compiled_or_eager():
    """fit's dynamic binarization: the compiled run draws inside its step what the eager run draws, so
    the two runs of an autoencoder (no other random draw) have the same losses; two epochs draw
    different binarizations (the loss moves)."""
    torch.manual_seed(0)
    grey = torch.rand(60, 784) * 0.8
    losses = {}
    for compile in (False, "step"):
        torch.manual_seed(1)
        m = pvae.AE(x_shape=(784,), latent_dim=4, hidden=(16,))
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the compiled run compiles (no "the step stays eager")
            h = pvae.fit(m, pvae.Data(grey, binarize="dynamic"), epochs=2, batch_size=20, lr=1e-12, compile=compile,
                         seed=3, progress=False)
        losses[compile] = [r["train_loss"] for r in h]
    assert losses[False] == pytest.approx(losses["step"], rel=1e-5)
    # lr ~0: the same model both epochs, so only the binarization differs
    assert losses[False][0] != losses[False][1]


def test_a_captured_step_reads_each_steps_counter():
    """Under graph capture (the CUDA path, here with the CPU stand-in) the counter is a static input
    filled in before each replay: every replay draws its own step's binarization, as uncaptured."""
    from test_compiled import cpu_capture

    torch.manual_seed(0)
    grey = torch.rand(50, 784)
    runs = {}
    for capture in (False, True):
        torch.manual_seed(0)
        m = pvae.AE(x_shape=(784,), latent_dim=4, hidden=(16,))
        params = list(m.parameters())
        opt = torch.optim.Adam(params, lr=1e-2)
        d = DynamicDraws("cpu")
        d.seed = 99
        step = CompiledStep(m, pvae.objective("elbo"), params, fallback=None, compile_graph=False, say=pytest.fail,
                            optimizer=opt, capture=capture, capture_backend=cpu_capture, draws=d)
        losses = []
        for i in range(5):  # 3 warm-up calls, a capture, replays
            xb = grey[i * 10:(i + 1) * 10].clone()
            d.at(i, xb.numel(), xb)
            losses.append(step(xb))
        runs[capture] = torch.stack(losses)
    assert torch.equal(runs[True], runs[False])
    assert len(set(runs[False].tolist())) == 5
