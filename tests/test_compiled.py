"""The compiled SVI step (compile="step"): the traced step is the eager step, draws stay fresh,
and what cannot be traced stays eager with one line."""

import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch

import pvae
from pvae.infer.compiled import CompiledStep, PerDatapointELBO

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
    with pytest.raises(ValueError, match="compile must be 'auto', 'step' .*, False or True .*got 'yes'"):
        pvae.fit(vae(), X, compile="yes", progress=False)


def test_denormals_are_flushed_while_training_and_restored_after(monkeypatch):
    import sys

    seen = []
    module = sys.modules["pvae.training.fit"]
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


def test_denormals_are_flushed_on_torchs_worker_threads_too():
    # torch.set_flush_denormal sets the calling thread only; the OpenMP workers (half of every large op,
    # every inductor kernel) keep what they had when made, and denormal inputs slow a product up to 100x
    from pvae.nn.nets import flush_denormals

    if torch.get_num_threads() < 2:
        pytest.skip("one thread: there are no worker threads")
    x = torch.full((1 << 20,), 1e-30)
    assert int(((x * 1e-10) != 0).sum()) == len(x)  # denormals everywhere, and the worker threads exist now
    with flush_denormals() as ok:
        if not ok:
            pytest.skip("this CPU cannot flush denormals")
        assert int(((x * 1e-10) != 0).sum()) == 0  # on every thread, not on the calling thread's share only
    assert int(((x * 1e-10) != 0).sum()) == len(x)  # restored on every thread


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

    from pvae.infer.traces import _per_datapoint

    guide = poutine.trace(model.guide).get_trace(X[:5])
    site = poutine.trace(poutine.replay(model.model, trace=guide)).get_trace(X[:5]).nodes["z"]
    site = {**site, "value": site["value"].detach().to("meta")}
    assert _per_datapoint(site, num_dims=2, data_plate="data", particle=False).device.type == "meta"


def adam_reference(m, elbo, x, steps, lr=1e-2, clip=None, seed=1):
    """The eager loop the in-graph update must equal: Trace-equivalent loss, backward, clipping,
    torch.optim.Adam."""
    opt = torch.optim.Adam(m.parameters(), lr=lr)
    torch.manual_seed(seed)
    losses = []
    for _ in range(steps):
        loss, _ = eager_step(m, elbo, x)
        if clip:
            torch.nn.utils.clip_grad_norm_(m.parameters(), clip)
        opt.step()
        losses.append(loss)
    return losses, opt


@pytest.mark.parametrize("clip", [None, 0.5])
@pytest.mark.parametrize("steps,tol", [(1, 1e-6), (3, 1e-4)])  # later steps start from rounding-different weights
def test_the_in_graph_adam_step_is_torch_adam_with_its_state_in_the_optimizer(clip, steps, tol):
    a, b = vae(), vae()
    params = list(a.parameters())
    opt = torch.optim.Adam(params, lr=1e-2)
    step = CompiledStep(a, pvae.objective("iwae:k=3"), params, fallback=None, compile_graph=False, say=pytest.fail,
                        optimizer=opt, clip_grad=clip)
    torch.manual_seed(1)
    losses = [step(X[:10]) for _ in range(steps)]
    assert step.updated and all(p.grad is None for p in params)  # no gradients left behind: the graph stepped
    ref_losses, ref_opt = adam_reference(b, step.elbo, X[:10], steps, clip=clip)
    torch.testing.assert_close(torch.stack(losses), torch.stack(ref_losses), rtol=1e-5, atol=1e-5)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=tol, atol=tol)  # tol: 1e-4 of a step of lr = 1e-2 after one step
        for key in ("exp_avg", "exp_avg_sq", "step"):  # the optimizer's own state: checkpoints and resume see it
            torch.testing.assert_close(opt.state[p][key], ref_opt.state[q][key], rtol=10 * tol, atol=tol)
    assert float(opt.state[params[0]]["step"]) == steps


def test_a_non_finite_step_leaves_parameters_and_adam_state_as_they_were():
    m = vae()
    params = list(m.parameters())
    opt = torch.optim.Adam(params, lr=1e-2)
    step = CompiledStep(m, pvae.objective("elbo"), params, fallback=None, compile_graph=False, say=pytest.fail,
                        optimizer=opt)
    step(X[:10])
    before = [p.detach().clone() for p in params] + [opt.state[p]["exp_avg"].clone() for p in params]
    bad = X[:10].clone()
    bad[0, 0] = float("nan")
    loss = step(bad)  # same shape: the same graph, with a NaN in the data
    assert not torch.isfinite(loss)
    after = [p.detach() for p in params] + [opt.state[p]["exp_avg"] for p in params]
    assert all(torch.equal(u, v) for u, v in zip(before, after))
    assert float(opt.state[params[0]]["step"]) == 1.0


def test_products_run_on_onednn_or_mkl_with_the_same_values(monkeypatch):
    from torch.fx.experimental.proxy_tensor import make_fx

    from pvae.infer import matmul

    if not matmul.available():
        pytest.skip("this torch has no oneDNN linear op")
    a, w, bias = torch.randn(30, 20), torch.randn(20, 10), torch.randn(10)

    def f(a, w, bias):
        h = torch.addmm(bias, a, w)
        return h, a.t() @ h  # a weight-gradient-shaped product: transposed left operand

    expected = f(a, w, bias)
    for how in ("onednn", "swapped", "mkl"):
        monkeypatch.setattr(matmul, "fastest", lambda *m, how=how: how)
        gm = make_fx(f)(a, w, bias)
        rewritten = matmul.use_fastest_matmuls(gm)
        assert rewritten == {"onednn": 2, "swapped": 2, "mkl": 0}[how]  # (addmm, which has no swapped form, on oneDNN)
        for got, want in zip(gm(a, w, bias), expected):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        with matmul.onednn_lowering():
            from torch._inductor.compile_fx import compile_fx

            compiled = compile_fx(gm, [a, w, bias])
        for got, want in zip(compiled(a, w, bias), expected):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    from torch._inductor import lowering

    assert lowering.lowerings.get(torch.ops.mkldnn._linear_pointwise.default) is not None  # restored


def test_a_compiled_graph_that_disagrees_with_the_traced_one_is_not_used(monkeypatch):
    import pvae.infer.graphs as graphs

    real = graphs._compile_fx

    def wrong(graph, inputs):
        fn = real(graph, inputs)
        return lambda *a: tuple(t + 1e-2 * (t.abs().max() + 1) for t in fn(*a))

    monkeypatch.setattr(graphs, "_compile_fx", wrong)
    said = []
    m = vae()
    step = CompiledStep(m, pvae.objective("elbo"), list(m.parameters()), fallback=None, say=said.append)
    torch.manual_seed(1)
    loss = step(X[:10])
    assert said and "does not reproduce the traced one" in said[-1]
    fresh = vae()
    torch.manual_seed(1)
    assert torch.equal(loss, eager_step(fresh, step.elbo, X[:10])[0])  # the traced graph ran: the eager numbers


def test_compiled_evaluation_draws_what_the_eager_pass_draws_and_sees_new_weights():
    m = vae()
    x = X[:30]

    def ll(compile):
        torch.manual_seed(7)
        return pvae.log_likelihood(m, x, k=40, batch_size=10, progress=False, compile=compile)

    eager, compiled = ll(False), ll(True)
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-3)  # random ops stay torch's: the same draws
    with torch.no_grad():
        m.decoder.net[2].bias += 0.5
    eager_after, compiled_after = ll(False), ll(True)  # the kept graph, new weights
    torch.testing.assert_close(compiled_after, eager_after, rtol=1e-4, atol=1e-3)
    assert (compiled_after - compiled).abs().max() > 1.0  # the weights are inputs of the graph, not constants
    r = pvae.evaluate(m, x, k=40, batch_size=10, progress=False, compile=True, units=False)
    torch.testing.assert_close(r["log_px"].mean(), eager_after.mean(), rtol=0, atol=0.5)


def test_the_default_evaluation_reuses_a_models_compiled_graphs_and_compiles_nothing_below_the_threshold(monkeypatch):
    import pvae.infer.compiled as compiled_module
    import pvae.infer.importance as importance

    m = vae()
    x = X[:20]
    torch.manual_seed(3)
    compiled = pvae.log_likelihood(m, x, k=40, batch_size=10, progress=False, compile=True)
    eager_passes = []
    real = importance.log_weight_terms

    def counted(*args, **kwargs):
        eager_passes.append(kwargs["num_particles"])
        return real(*args, **kwargs)

    def no_recording(*args, **kwargs):
        raise AssertionError("compile=None below COMPILE_FROM recorded a new graph")

    monkeypatch.setattr(importance, "log_weight_terms", counted)
    monkeypatch.setattr(compiled_module, "record", no_recording)
    torch.manual_seed(3)
    again = pvae.log_likelihood(m, x, k=40, batch_size=10, progress=False)  # 800 pairs: far below COMPILE_FROM
    assert eager_passes == []  # every pass ran the kept graph: its compile is already paid
    torch.testing.assert_close(again, compiled)
    pvae.log_likelihood(m, x, k=30, batch_size=10, progress=False)  # a new shape: eager, nothing compiled
    assert eager_passes == [30, 30]
    pvae.log_likelihood(vae(), x, k=40, batch_size=10, progress=False)  # another model has no graphs: eager
    assert eager_passes == [30, 30, 40, 40]


def test_the_default_evaluation_prices_a_compile_by_what_this_machine_compiled_before(monkeypatch, tmp_path):
    import pvae.infer.compiled_eval as compiled_module
    import pvae.infer.importance as importance

    monkeypatch.setenv("PVAE_CACHE_DIR", str(tmp_path))  # nothing compiled before
    monkeypatch.setattr(importance, "COMPILE_FROM", {"graph": 400, "warm": 1000, "cold": 10_000})
    real, recorded = compiled_module.record, []

    def counted(*args, **kwargs):
        recorded.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(compiled_module, "record", counted)
    x = X[:20]
    pvae.log_likelihood(vae(), x, k=40, batch_size=10, progress=False)  # 800 pairs < cold: eager
    assert recorded == []
    pvae.log_likelihood(vae(), x, k=40, batch_size=10, progress=False, compile=True)
    assert recorded == [1]
    pvae.log_likelihood(vae(), x, k=40, batch_size=10, progress=False)  # this very graph before: 800 >= 400
    assert recorded == [1, 1]
    pvae.log_likelihood(vae(), x, k=30, batch_size=10, progress=False)  # other shapes: 600 < warm, eager
    assert recorded == [1, 1]
    pvae.log_likelihood(vae(), X[:40], k=30, batch_size=10, progress=False)  # 1200 >= warm
    assert recorded == [1, 1, 1]


def test_compiled_evaluation_of_a_program_with_global_latents_stays_eager_and_says_so():
    def model(x):
        w = pyro.sample("w", dist.Normal(torch.zeros(784), 1.0).to_event(1))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Bernoulli(logits=w).to_event(1), obs=x)

    loc = torch.nn.Parameter(torch.zeros(784))

    def guide(x):
        pyro.sample("w", dist.Normal(loc, 1.0).to_event(1))

    holder = torch.nn.Module()
    holder.loc = loc
    with pytest.warns(UserWarning, match="compiled evaluation: the pass stays eager: the program has global latents"):
        ll = pvae.log_likelihood(model, X[:5], guide=guide, modules=[holder], k=10, progress=False, compile=True)
    assert ll.shape == (5,)


def test_auto_compiles_the_step_once_its_first_steps_show_that_compiling_pays(monkeypatch):
    import pvae.infer.compiled as compiled
    import pvae.training.loop as train

    built = []

    class Spy(compiled.CompiledStep):
        def __init__(self, *a, **k):
            built.append(1)
            super().__init__(*a, **k)

    monkeypatch.setattr(compiled, "CompiledStep", Spy)
    pvae.fit(vae(), X, epochs=2, batch_size=10, progress=False)  # 10 steps of ~1 ms: far from paying
    assert not built
    monkeypatch.setattr(train, "COMPILE_SECONDS", {"warm": 0.0, "cold": 0.0})  # any run pays
    h = pvae.fit(vae(), X, epochs=2, batch_size=10, progress=False, test=X)
    assert built == [1] and h[-1]["test_elbo"] > h[0]["test_elbo"] - 5  # 5 eager steps, then compiled ones
    pvae.fit(vae(), X, epochs=2, batch_size=10, progress=False, compile=False)
    assert built == [1]


def test_auto_counts_the_compile_cost_warm_where_this_machine_compiled_the_step_before(monkeypatch, tmp_path):
    import pvae.training.loop as loop

    monkeypatch.setenv("PVAE_CACHE_DIR", str(tmp_path))
    # 1000 steps left of 10 ms: compiling saves 4 s, more than a warm compile (3 s), less than a cold one
    monkeypatch.setattr(loop, "COMPILE_SECONDS", {"warm": 3.0, "cold": 20.0})
    assert loop.compile_pays(0.01, 1000, warm=True) and not loop.compile_pays(0.01, 1000, warm=False)
    m = vae()
    sig = loop.step_signature(m, pvae.objective("elbo"), (X[:10],), {}, torch.device("cpu"))
    assert sig == loop.step_signature(vae(), pvae.objective("elbo"), (X[:10],), {}, torch.device("cpu"))
    assert sig != loop.step_signature(m, pvae.objective("iwae", k=5), (X[:10],), {}, torch.device("cpu"))
    assert not loop.seen_before(sig)
    monkeypatch.setattr(loop, "COMPILE_SECONDS", {"warm": 0.0, "cold": 0.0})
    pvae.fit(m, X, epochs=2, batch_size=10, progress=False)  # compiles, and remembers it did
    assert loop.seen_before(sig)
    (tmp_path / "compiled-steps.json").write_text("{not json")
    assert not loop.seen_before(sig)  # a damaged record: cold, never an error
    pvae.fit(vae(), X, epochs=1, batch_size=10, progress=False, compile="step")  # a forced compile warms it too
    assert loop.seen_before(sig)


def test_product_choices_persist_on_disk_for_the_next_process(monkeypatch, tmp_path):
    from pvae.infer import matmul

    if not matmul.available():
        pytest.skip("no oneDNN in this torch")
    monkeypatch.setenv("PVAE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(matmul, "_cache", {})
    monkeypatch.setattr(matmul, "_disk", None)
    a, b = torch.randn(30, 20), torch.randn(20, 10)
    choice = matmul.fastest(a, b)
    files = list(tmp_path.glob("matmul-*.json"))
    assert len(files) == 1 and choice in files[0].read_text()
    monkeypatch.setattr(matmul, "_cache", {})  # a new process: nothing timed yet, the disk remembers
    monkeypatch.setattr(matmul, "_disk", None)
    monkeypatch.setattr(matmul, "_timed", lambda *a, **k: pytest.fail("timed again"))
    assert matmul.fastest(a, b) == choice
    files[0].write_text("garbage")  # damaged: timed again, no error
    monkeypatch.setattr(matmul, "_cache", {})
    monkeypatch.setattr(matmul, "_disk", None)
    monkeypatch.setattr(matmul, "_timed", lambda candidates, budget=0.2: {n: 1.0 for n in candidates})
    assert matmul.fastest(a, b) in ("mkl", "onednn", "swapped")
    monkeypatch.setenv("PVAE_CACHE_DIR", "")  # off
    assert matmul._disk_file() is None


def test_the_command_line_compile_step_option():
    from argparse import Namespace

    from pvae.cli import compile_option

    assert [compile_option(Namespace(compile=False, compile_step=v)) for v in ("auto", "on", "off")] == \
        ["auto", "step", False]
    assert compile_option(Namespace(compile=True, compile_step="auto")) is True


def cpu_capture(body, static):
    """A CPU stand-in for `pvae.infer.graphs.cuda_capture` with its contract: capturing changes nothing
    (the state and the random stream are restored), each replay runs the step and writes its
    results into the same output tensors."""
    saved, rng = [t.clone() for t in static], torch.get_rng_state()
    outputs = [o.clone() for o in body()]
    for t, s in zip(static, saved):
        t.copy_(s)
    torch.set_rng_state(rng)

    def replay():
        for o, new in zip(outputs, body()):
            o.copy_(new)
    return replay, outputs


def test_the_captured_step_copies_each_batch_in_and_trains_as_the_uncaptured_one():
    runs = {}
    for capture in (False, True):
        m = vae()
        params = list(m.parameters())
        opt = torch.optim.Adam(params, lr=1e-2)
        step = CompiledStep(m, pvae.objective("elbo"), params, fallback=None, compile_graph=False, say=pytest.fail,
                            optimizer=opt, capture=capture, capture_backend=cpu_capture)
        torch.manual_seed(2)
        losses = [step(X[i * 10:(i + 1) * 10]) for i in range(5)]  # 3 warm-up calls, a capture, replays
        if capture:
            graph = next(iter(step.graphs.values()))[0]
            assert graph.replay is not None and graph.calls == 5
            losses[-1].add_(0)  # the returned loss is a copy: the next replay does not rewrite it
        runs[capture] = (torch.stack(losses), [p.detach().clone() for p in params])
    assert torch.equal(runs[True][0], runs[False][0])  # every batch reached the captured graph
    assert all(torch.equal(a, b) for a, b in zip(runs[True][1], runs[False][1]))


def test_a_captured_step_refuses_a_moved_parameter():
    from pvae.infer.graphs import CapturedGraph

    w = torch.ones(3)
    graph = CapturedGraph(lambda w, x: (w * x,), dynamic={1}, backend=cpu_capture, warmup=0)
    assert torch.equal(graph(w, torch.full((3,), 2.0))[0], torch.full((3,), 2.0))
    assert torch.equal(graph(w, torch.full((3,), 3.0))[0], torch.full((3,), 3.0))  # copied into the buffer
    with pytest.raises(RuntimeError, match="input 0 must be the same tensor on every call"):
        graph(w.clone(), torch.ones(3))


def test_a_users_own_pyro_program_gets_the_compiled_step():
    """Pyro's examples/vae shape (pyro.module inside model and guide, its own plate name): traced,
    compiled with the Adam step, and trained as the eager run trains it."""
    from programs import ExampleVAE

    h = {}
    for compile in (False, "step"):
        pyro.clear_param_store()
        m = ExampleVAE(x_dim=784, z_dim=4, hidden=16, plate="minibatch")
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)  # nothing may keep this step eager
            h[compile] = pvae.fit(m, X, epochs=4, batch_size=20, lr=1e-2, compile=compile, test=X, progress=False)
    eager, compiled = h[False][-1]["test_elbo"], h["step"][-1]["test_elbo"]
    assert compiled > h["step"][0]["test_elbo"]
    assert abs(compiled - eager) < 0.02 * abs(eager), (eager, compiled)


def test_a_program_whose_step_updates_buffers_stays_eager_with_one_line():
    from programs import BatchNormVAE

    counted = {}
    for compile in (False, "step"):
        pyro.clear_param_store()
        m = BatchNormVAE(x_dim=784, z_dim=4, hidden=16)
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            pvae.fit(m, X, epochs=1, batch_size=25, compile=compile, progress=False)
        assert any("a step updates the module's buffers" in str(w.message) for w in said) == bool(compile), [str(w.message) for w in said]
        counted[compile] = m.enc[1].num_batches_tracked.item()
    assert counted["step"] == counted[False]  # the recording's forward pass is not counted as a batch


def test_gpu_chunks_fill_a_quarter_of_the_free_memory_within_the_cpu_chunk_and_k():
    from pvae.infer.importance import chunk_for_memory

    gib = 2 ** 30
    # 40 GiB free, 8 KiB per particle-datapoint pair, batch 100: a quarter of 40 GiB holds 13,107 particles
    assert chunk_for_memory(40 * gib, 8192, 100, 50_000, 200) == 13_107
    assert chunk_for_memory(40 * gib, 8192, 100, 5000, 200) == 5000  # never beyond k
    assert chunk_for_memory(1 * gib, 8 * 2 ** 20, 100, 5000, 200) == 200  # never below the pass that fit


def test_the_command_line_says_a_fallback_in_one_line(tmp_path, capsys):
    from pvae.cli import main

    assert main(["train", "--model", "gumbel", "--num-vars", "4", "--n-train", "100", "--n-test", "20", "--epochs", "1",
                 "--hidden", "16", "--eval-k", "0", "--quiet", "--compile-step", "on",
                 "--run-dir", str(tmp_path / "r")]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if "compile" in line]
    assert err == ["pvae: warning: compile='step': the step stays eager: the model anneals a value every step"]


def test_auto_hands_back_to_eager_when_the_compiled_step_is_not_faster_here(monkeypatch, tmp_path):
    """Measured on one Intel Xeon: the IWAE paper's net at k = 50 took 79 ms a step compiled and 65 ms
    eager. auto times its first compiled steps too, goes back to eager in one line, and does not
    compile that step again on this machine; a faster compiled step stays."""
    import time

    import pvae.training.loop as loop
    from pvae.util.cache import slower_here

    monkeypatch.setenv("PVAE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(loop, "COMPILE_SECONDS", {"warm": 0.0, "cold": 0.0})
    calls = []

    def eager():
        calls.append("e")
        time.sleep(0.004)
        return torch.zeros(())

    class Compiled:
        graphs = {"shape": "graph"}

        def __init__(self, seconds):
            self.seconds = seconds

        def __call__(self):
            calls.append("c")
            time.sleep(self.seconds)
            return torch.zeros(())

    said = []
    step = loop.AutoStep(eager, lambda: Compiled(0.012), 100, torch.device("cpu"), signature="slow", say=said.append)
    for _ in range(20):
        step()
    # 5 probes, the compile, 5 eager and 5 compiled steps alternating (timed alike), then eager
    assert calls == ["e"] * 5 + ["c"] + ["e", "c"] * 5 + ["e"] * 4
    assert len(said) == 1 and "the step stays eager: compiled it took" in said[0]
    assert slower_here("slow")
    again = loop.AutoStep(eager, lambda: pytest.fail("compiled again"), 100, torch.device("cpu"), signature="slow")
    for _ in range(8):
        again()
    calls.clear()
    fast = loop.AutoStep(eager, lambda: Compiled(0.0005), 100, torch.device("cpu"), signature="fast", say=said.append)
    for _ in range(20):
        fast()
    assert calls == ["e"] * 5 + ["c"] + ["e", "c"] * 5 + ["c"] * 4 and len(said) == 1 and not slower_here("fast")
    # the verdict compares steps timed alternately: a machine that slows down 3x right after the compile
    # (eager steps timed before it at 4 ms, every later step 3x slower) keeps the faster compiled step
    calls.clear()
    slow_phase = {"on": False}

    def eager_in_phase():
        calls.append("e")
        time.sleep(0.004 * (3 if slow_phase["on"] else 1))
        return torch.zeros(())

    class PhaseCompiled(Compiled):
        def __call__(self):
            slow_phase["on"] = True
            calls.append("c")
            time.sleep(self.seconds * 3)
            return torch.zeros(())

    phased = loop.AutoStep(eager_in_phase, lambda: PhaseCompiled(0.0015), 100, torch.device("cpu"),
                           signature="phased", say=said.append)
    for _ in range(20):
        phased()
    assert calls[-4:] == ["c"] * 4 and len(said) == 1 and not slower_here("phased")


# -- the compiled step follows the program's Python state (issue 29, class 6) ----------------------------------
def test_a_value_changed_between_epochs_is_recorded_afresh_then_kept_eager():
    m, said = vae(beta=1.0), []
    params = list(m.parameters())
    elbo = PerDatapointELBO()
    step = CompiledStep(m, elbo, params, fallback=lambda x: eager_step(m, elbo, x)[0], compile_graph=False,
                        say=said.append)
    step(X[:10])
    for beta in (3.0, 0.5):  # a KL-annealing callback between epochs
        m.beta = beta
        step.follow_state()
        torch.manual_seed(2)
        loss = step(X[:10])
        torch.manual_seed(2)
        assert torch.equal(loss, eager_step(m, elbo, X[:10])[0]), beta  # the graph held beta = 1 before
    assert len(said) == 1 and "beta: 3.0 -> 0.5" in said[0] and "eager from now on" in said[0]


BETA = 2.0


def test_a_global_value_the_guide_reads_is_followed_and_a_self_changing_program_stays_eager():
    global BETA
    net = torch.nn.Linear(784, 4)

    def model(x):
        pyro.module("dec", net)
        with pyro.plate("data", x.shape[0]):
            with pyro.poutine.scale(scale=BETA):  # a beta-VAE whose beta is a module global
                z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([x.shape[0], 2]).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=z.sum(-1, keepdim=True).expand(*z.shape[:-1], 784)).to_event(1), obs=x)

    def guide(x):
        h = net(x)
        with pyro.plate("data", x.shape[0]), pyro.poutine.scale(scale=BETA):
            pyro.sample("z", dist.Normal(h[:, :2], h[:, 2:].exp()).to_event(1))

    pair = pvae.infer.pair.as_pair(model, guide, modules=net)
    elbo, params = PerDatapointELBO(), list(pair.parameters())
    step = CompiledStep(pair, elbo, params, fallback=None, compile_graph=False, say=pytest.fail)
    step(X[:10])
    BETA = 4.0
    try:
        step.follow_state()
        torch.manual_seed(5)
        loss = step(X[:10])
        torch.manual_seed(5)
        assert torch.equal(loss, eager_step(pair, elbo, X[:10])[0])
    finally:
        BETA = 2.0

    class Counting(pvae.VAE):  # anneals from a counter of its own: a recorded graph cannot follow it
        calls = 0

        def guide(self, x):
            self.calls += 1
            self.beta = min(1.0, self.calls / 100)  # read by model and guide alike
            return super().guide(x)

    m, said = Counting(x_shape=(784,), latent_dim=2, hidden=(8,)), []
    step = CompiledStep(m, elbo, list(m.parameters()), fallback=lambda x: eager_step(m, elbo, x)[0],
                        compile_graph=False, say=said.append)
    step(X[:10])
    assert not step.graphs or all(g is None for g in step.graphs.values())
    assert said and "changes its own Python state as it runs (beta: 1.0 -> 0.02)" in said[0]


def test_a_kl_annealing_callback_trains_the_compiled_run_like_the_eager_one(monkeypatch):
    monkeypatch.setattr(pvae.infer.compiled, "compile_graph", lambda graph, *a, **k: graph)  # traced, not compiled
    losses = {}
    for compile in (False, "step"):
        m = vae()

        def anneal(record, history, m=m):
            m.beta = 20.0 if len(history) == 1 else 0.5

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            h = pvae.fit(m, X, epochs=3, batch_size=25, lr=1e-2, compile=compile, seed=0, progress=False,
                         callbacks=[anneal])
        losses[compile] = [r["train_loss"] for r in h]
    eager, compiled = losses[False], losses["step"]
    assert eager[1] > 1.03 * eager[0]  # beta = 20 shows in the loss ...
    for a, b in zip(eager, compiled):  # ... and the compiled run follows it
        assert abs(a - b) < 0.01 * abs(a), (eager, compiled)


def test_a_step_that_will_not_trace_says_why_in_one_line():
    class Branches(pvae.VAE):  # a Python branch on the data: a recorded graph cannot hold it
        def guide(self, x):
            return super().guide(x if x.sum().item() > 0 else 1 - x)

    torch.manual_seed(0)
    m, said = Branches(x_shape=(784,), latent_dim=2, hidden=(8,)), []
    elbo = PerDatapointELBO()
    step = CompiledStep(m, elbo, list(m.parameters()), fallback=lambda x: eager_step(m, elbo, x)[0],
                        compile_graph=False, say=said.append)
    assert torch.isfinite(step(X[:10]))
    assert len(said) == 1 and said[0].startswith("compile='step': the step stays eager for inputs of shape (10, 784)")


def test_inductor_takes_the_cpus_vector_instructions_as_reported_and_falls_back_to_its_own_tests():
    from torch._inductor import config as inductor_config

    from pvae.infer.graphs import _trusting_the_cpu

    seen = []

    def build(fail_first):
        seen.append(inductor_config.cpp.vec_isa_ok)
        if fail_first and len(seen) == 1:
            raise RuntimeError("CppCompileError: this compiler has no avx512")
        return "compiled"

    assert _trusting_the_cpu(lambda: build(False)) == "compiled" and seen == [True]  # no test builds
    seen.clear()
    assert _trusting_the_cpu(lambda: build(True)) == "compiled" and seen == [True, None]  # then inductor's tests
    seen.clear()
    with inductor_config.patch({"cpp.vec_isa_ok": False}):  # a user's own setting is left alone
        assert _trusting_the_cpu(lambda: build(False)) == "compiled" and seen == [False]
    seen.clear()

    def lowering_fails():
        seen.append(inductor_config.cpp.vec_isa_ok)
        raise NotImplementedError("no lowering for this op")

    with pytest.raises(NotImplementedError):  # another failure is not the vector instructions: no second try
        _trusting_the_cpu(lowering_fails)
    assert seen == [True]


def test_inductor_keeps_its_caches_beside_pvae_records_unless_the_user_chose_a_folder(monkeypatch, tmp_path):
    import os

    from torch._inductor import codecache
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    import pvae.infer.graphs as graphs
    from pvae.util import cache

    monkeypatch.setenv("PVAE_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    where = cache.inductor_dir()
    assert where.parent == tmp_path and where.name.startswith("inductor-")
    headers = codecache._HEADER_DIR
    seen = []
    monkeypatch.setattr(graphs, "_inductor", lambda graph, inputs, *ahead: seen.append(
        (os.environ.get("TORCHINDUCTOR_CACHE_DIR"), codecache._HEADER_DIR)) or "compiled")
    assert graphs._compile_fx(None, []) == "compiled"  # every pvae compile goes through it
    assert seen == [(str(where), str(where / "precompiled_headers"))] and where.is_dir()
    assert "TORCHINDUCTOR_CACHE_DIR" not in os.environ and codecache._HEADER_DIR == headers  # as it was

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())  # inductor's own setting: no choice
    assert cache.inductor_dir() == where
    with cache.inductor_caches():
        assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(where)
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == default_cache_dir()

    mine = str(tmp_path / "mine")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", mine)  # the user's choice stands
    assert cache.inductor_dir() is None and cache.compiled_record() == cache.COMPILED
    with cache.inductor_caches():
        assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == mine and codecache._HEADER_DIR == headers
    monkeypatch.setenv("PVAE_CACHE_DIR", "")  # records off: inductor's default
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    assert cache.inductor_dir() is None


def test_a_compile_record_never_outlives_the_inductor_caches_it_speaks_of(monkeypatch, tmp_path):
    import shutil

    from pvae.util import cache

    monkeypatch.setenv("PVAE_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    cache.write_record(cache.COMPILED, ["sig"])  # an older pvae's record, of caches in /tmp
    assert not cache.seen_before("sig") and cache.compile_tier("sig", "kin") == "cold"
    cache.remember("sig")  # no caches of pvae's yet: nothing to speak of
    assert not cache.seen_before("sig")
    with cache.inductor_caches():  # what a compile does
        pass
    cache.remember("sig")
    assert cache.seen_before("sig") and cache.compile_tier("sig", "kin") == "graph"
    assert cache.compile_tier("other", "sig") == "warm"
    shutil.rmtree(cache.inductor_dir())  # the user cleared inductor's caches: cold again
    assert not cache.seen_before("sig") and cache.compile_tier("sig", "kin") == "cold"


def test_a_graphs_kernels_build_together_and_compute_what_the_recording_computes(monkeypatch):
    from torch._inductor import config as inductor_config
    from torch._inductor.async_compile import get_compile_threads
    from torch._inductor.codecache import CppPythonBindingsCodeCache as Cache
    from torch.fx.experimental.proxy_tensor import make_fx

    import pvae.infer.graphs as graphs

    if get_compile_threads() <= 1:
        pytest.skip("inductor compiles one kernel at a time here: nothing is batched")
    builds, ahead = [], []
    real = Cache.load_async.__func__

    def counted(cls, main_code, *a, **k):
        import threading

        if threading.current_thread().name == "pvae-header":  # the precompiled header, built ahead
            ahead.append((inductor_config.cpp.vec_isa_ok, "submit_fn" in k))
        else:
            builds.append(main_code.count("namespace pvae_kernel_"))
        return real(cls, main_code, *a, **k)

    monkeypatch.setattr(Cache, "load_async", classmethod(counted))

    def f(a, w):  # a product between elementwise work: several fused kernels
        h = torch.tanh(a * 2.0 + 1.0) @ w
        return torch.sigmoid(h).sum(0), (h.exp() - h).mean(1)

    a, w = torch.randn(30, 20), torch.randn(20, 10)
    graph = make_fx(f)(a, w)
    with inductor_config.patch(force_disable_caches=True):  # compiled afresh: its kernels are asked for
        compiled = graphs._compile_fx(graph, [a, w])
    got, want = compiled(a, w), f(a, w)
    for x, y in zip(got, want):
        torch.testing.assert_close(x, y)
    assert builds and all(n >= 1 for n in builds) and len(builds) <= 2 and sum(builds) >= 2, builds
    # the header was asked for on a thread from the start, with the caller's inductor settings (pvae's
    # trust in the CPU's vector instructions included), and no build was started for it
    assert ahead == [(True, False)] or inductor_config.cpp.vec_isa_ok is not None, ahead


def test_the_header_thread_is_joined_and_a_failure_there_changes_nothing(monkeypatch):
    import threading

    from torch._inductor import config as inductor_config
    from torch._inductor.codecache import CppPythonBindingsCodeCache as Cache

    from pvae.infer import cpp_kernels

    seen = []

    def failing(cls, main_code, *a, **k):
        seen.append((threading.current_thread().name, inductor_config.max_autotune))
        raise OSError("no compiler")

    monkeypatch.setattr(Cache, "load_async", classmethod(failing))
    with inductor_config.patch(max_autotune=True):  # a setting of the caller's thread
        with cpp_kernels.header_ahead():
            pass
    assert seen == [("pvae-header", True)]
    assert not [t for t in threading.enumerate() if t.name == "pvae-header"]
    with inductor_config.patch(cpp_cache_precompile_headers=False), cpp_kernels.header_ahead():
        pass
    assert len(seen) == 1  # no header to build: no thread


def test_a_kernel_batch_builds_one_by_one_what_it_does_not_recognise():
    from pvae.infer import cpp_kernels

    one_by_one = []
    batch = cpp_kernels._Batch(lambda argtypes, source: one_by_one.append(source) or (lambda *a: source),
                               submit=None, parts=2)
    futures = [batch.add(["float*"], "void kernel(float* out) {}"),  # no extern "C" entry point
               batch.add(["float*"], 'extern "C" void other(float* out) {}')]
    assert [f.result()() for f in futures] == ["void kernel(float* out) {}", 'extern "C" void other(float* out) {}']
    assert len(one_by_one) == 2
    groups = cpp_kernels._parts([(0, [], "a" * 50), (1, [], "b" * 10), (2, [], "c" * 45), (3, [], "d")], 2)
    assert sorted(map(len, groups)) == [2, 2] and sorted(i for g in groups for i, _, _ in g) == [0, 1, 2, 3]
    template = ('static PyObject* {entry_func}_py(PyObject* self, PyObject* args) {{ {call_entry_func} }}\n'
                'static PyMethodDef py_methods[] = {{ {{"{entry_func}", {entry_func}_py, METH_VARARGS, ""}}, }};'
                '{arg_len}{extra_parse_arg}')
    text = cpp_kernels.combined_source([(0, ["float*"], '#include <x.h>\nextern "C" void kernel(float* p) {}'),
                                        (3, ["const float*", "long"], '#include <x.h>\nextern "C" void kernel() {}')],
                                       template)
    assert text.count("#include <x.h>") == 1 and 'extern "C"' not in text
    assert "pvae_kernel_3::kernel(parse_arg<float*>(args, 0), parse_arg<long>(args, 1))" in text
    assert '{"kernel_0", kernel_0_py' in text and '{"kernel_3", kernel_3_py' in text


def test_large_cpu_buffers_are_reused_not_faulted_in_afresh_once_pvae_has_run():
    import resource

    from pvae.util import memory

    if memory.user_choice() is not None:
        pytest.skip(f"malloc is the user's here ({memory.user_choice()})")
    pvae.fit(vae(), X, epochs=1, batch_size=10, progress=False, compile=False)  # pvae's CPU work fixes it
    if not memory.keep_buffers():
        pytest.skip("not glibc")

    def cycle():  # an IWAE step's pattern: several buffers of 16 MB, written, then freed
        buffers = [torch.empty(4_000_000).fill_(1.0) for _ in range(4)]
        del buffers

    cycle()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        cycle()
    per_cycle = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10
    assert per_cycle < 0.1 * 4 * 4_000_000 * 4 / 4096, per_cycle  # glibc's defaults: about 22% of the pages


def test_pvae_leaves_malloc_to_a_user_who_tuned_it():
    from pvae.util.memory import user_choice

    assert user_choice({}) is None
    assert user_choice({"PVAE_MALLOC": "off"}) == "PVAE_MALLOC"
    assert user_choice({"MALLOC_TRIM_THRESHOLD_": "0"}) == "MALLOC_TRIM_THRESHOLD_"
    assert user_choice({"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=1"}) == "GLIBC_TUNABLES"
    assert user_choice({"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX2"}) is None
    assert user_choice({"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}) == "LD_PRELOAD"
