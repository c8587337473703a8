"""The graph machinery behind the compiled step and the compiled evaluation pass
([`pvae.infer.compiled`][pvae.infer.compiled]): record a function once with ``make_fx``, compile it with inductor,
check the compiled graph against the recording, and capture a step in one CUDA graph."""

from __future__ import annotations

import contextlib
import warnings

import torch

from pvae.infer import traces


class CapturedGraph:
    """``fn(*inputs)`` run as one CUDA graph: ``warmup`` plain calls (lazy initialisation happens
    outside the capture), then one capture, then a replay per call. The inputs at the positions in
    ``dynamic`` (the batch, the learning rate) are copied into static buffers before each replay;
    the others (parameters, optimizer state, which the graph updates in place) must be the same
    tensors on every call. The outputs are the graph's static tensors, rewritten by each replay.

    ``backend(body, static) -> (replay, outputs)`` captures ``body`` (which reads ``static``):
    `cuda_capture` on a GPU; the tests pass a stand-in that runs the same logic on the CPU."""

    def __init__(self, fn, dynamic: set, backend=None, warmup: int = 3):
        self.fn, self.dynamic, self.backend, self.warmup = fn, dynamic, backend or cuda_capture, warmup
        self.calls, self.replay, self.static, self.outputs = 0, None, None, None

    def __call__(self, *inputs):
        self.calls += 1
        if self.calls <= self.warmup:
            return self.fn(*inputs)
        if self.replay is None:
            self.static = [t.clone() if i in self.dynamic else t for i, t in enumerate(inputs)]
            self.replay, self.outputs = self.backend(lambda: self.fn(*self.static), self.static)
        for i, t in enumerate(inputs):
            if i in self.dynamic:
                self.static[i].copy_(t)
            elif t.data_ptr() != self.static[i].data_ptr():
                raise RuntimeError(f"a captured step's input {i} must be the same tensor on every call")
        self.replay()
        return self.outputs


def cuda_capture(body, static=None):
    """Capture ``body`` in a ``torch.cuda.CUDAGraph``; returns ``(graph.replay, outputs)``. Capturing
    runs nothing: the first replay is the step."""
    graph = torch.cuda.CUDAGraph()
    torch.cuda.synchronize()
    with torch.cuda.graph(graph):
        outputs = body()
    return graph.replay, outputs


def record(fn, trace_inputs, inputs, say, blocked: str):
    """``fn`` recorded by ``make_fx`` at ``trace_inputs`` and replayed on ``inputs`` under the
    random state of an eager call, which it must reproduce bit for bit; returns ``(graph, state,
    replay)`` (the random state is left at ``state``), or None, with one line (``blocked: why``)."""
    from torch.fx.experimental.proxy_tensor import make_fx

    state = _rng_state(inputs[-1].device)
    try:
        eager = fn(*trace_inputs)
        _set_rng_state(state)
        traces.TRACING = True
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with one_fake_mode():
                graph = make_fx(fn)(*trace_inputs)
    except Exception as e:  # noqa: BLE001 - anything that will not trace stays eager
        say(f"{blocked} for inputs of shape {tuple(inputs[-1].shape)}: "
            f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}")
        return None
    finally:
        traces.TRACING = False
    _set_rng_state(state)
    with torch.no_grad():
        replay = graph(*inputs)
    _set_rng_state(state)
    if not all(torch.equal(a, b.detach()) for a, b in zip(replay, eager)):
        say(f"{blocked}: its traced graph differs from the eager one (control flow that depends on the data?)")
        return None
    return graph, state, replay


def one_fake_mode():
    """One fake-tensor mode for the shapes ``make_fx`` notes on each node: without a tracing
    context it makes a new mode per node, and each takes a Python stack trace (about 0.3 s of
    recording a step: warm, the first compiled ELBO step's extra cost went 1.3-1.4 -> 0.9 s)."""
    try:
        from torch._guards import TracingContext, tracing
        from torch._subclasses.fake_tensor import FakeTensorMode
    except ImportError:  # pragma: no cover - an older torch: a mode per node
        return contextlib.nullcontext()
    return tracing(TracingContext(FakeTensorMode(allow_fallback_kernels=True)))


def compile_graph(graph, inputs, state, expected, say=print, what: str = "compile='step'", mutates: bool = False,
                  slack=None):
    """Inductor's compilation of a recorded graph, checked against ``expected`` (the graph's own
    outputs for ``inputs`` under the random state ``state``).

    On the CPU the products run on the faster of MKL and oneDNN ([`pvae.infer.matmul`][pvae.infer.matmul]).
    Random ops stay torch's own (``fallback_random``), so the compiled graph draws what the eager
    step draws and can be checked: every output within 1e-3 of the largest entry of the expected
    one (products summed in another order differ by about 1e-6). A graph that fails the check, or
    does not compile, runs uncompiled, said in one line. ``mutates``: the graph updates its inputs
    in place; it is checked on copies, and ``expected`` lists its outputs then its inputs as the
    graph leaves them. ``slack``: an extra absolute tolerance per entry of ``expected`` (an Adam
    step moves a parameter whose gradient is nearly 0 by up to lr either way, as rounding decides
    the gradient's sign)."""
    import copy

    from torch._inductor import config as inductor_config

    from pvae.infer.matmul import onednn_lowering, use_fastest_matmuls

    tries = []
    if inputs[0].device.type == "cpu":
        fast = copy.deepcopy(graph)
        if use_fastest_matmuls(fast):
            tries.append((fast, onednn_lowering))
    tries.append((copy.deepcopy(graph), contextlib.nullcontext))  # inductor may rewrite what it compiles
    reason = ""
    for candidate, context in tries:
        try:
            with context(), inductor_config.patch(fallback_random=True), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                trial = [t.clone() for t in inputs] if mutates else list(inputs)
                compiled = _compile_fx(candidate, [t.clone() for t in trial] if mutates else trial)
                _set_rng_state(state)
                with torch.no_grad():
                    got = list(compiled(*trial)) + (trial if mutates else [])
        except Exception as e:  # noqa: BLE001 - a graph inductor cannot compile still runs, uncompiled
            reason = f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
            continue
        if all(_close(a, b, extra) for a, b, extra in zip(got, expected, slack or [0.0] * len(expected))):
            return compiled
        reason = "its compiled graph does not reproduce the traced one"
    say(f"{what}: the graph runs traced but uncompiled: {reason}")
    return graph


def _compile_fx(graph, inputs):
    """inductor's compile of ``graph`` for ``inputs``: its caches where pvae keeps them
    (`pvae.util.cache.inductor_caches`), and on the CPU its C++ kernels built together
    ([`pvae.infer.cpp_kernels`][pvae.infer.cpp_kernels])."""
    from pvae.infer.cpp_kernels import batched_kernels, header_ahead
    from pvae.util.cache import inductor_caches

    on_cpu = all(t.device.type == "cpu" for t in inputs if isinstance(t, torch.Tensor))
    with inductor_caches(), batched_kernels() if on_cpu else contextlib.nullcontext():
        return _inductor(graph, inputs, header_ahead if on_cpu else contextlib.nullcontext)


def _inductor(graph, inputs, ahead=contextlib.nullcontext):
    import logging

    quiet = logging.getLogger("torch.utils.cpp_extension")  # "No CUDA runtime is found" on every CPU machine
    if quiet.level == logging.NOTSET:
        quiet.setLevel(logging.ERROR)
    try:
        from torch._inductor.compile_fx import compile_fx
    except ImportError:  # pragma: no cover - an inductor without it: through dynamo (a guard check per call)
        return torch.compile(graph, dynamic=False)
    try:  # a fake-tensor context with a shape environment: what inductor's on-disk FX graph cache keys on
        from torch._guards import TracingContext, tracing
        from torch._subclasses.fake_tensor import FakeTensorMode
        from torch.fx.experimental.symbolic_shapes import ShapeEnv

        fake_mode = FakeTensorMode(shape_env=ShapeEnv(), allow_non_fake_inputs=True)
        fake = [fake_mode.from_tensor(t, static_shapes=True) if isinstance(t, torch.Tensor) else t for t in inputs]
    except ImportError:  # pragma: no cover - an inductor without them: compiled without the cache
        return compile_fx(graph, inputs)
    def build():
        with ahead():  # (inside `_trusting_the_cpu`: the header's build takes the same instruction set)
            return compile_fx(graph, fake)

    with tracing(TracingContext(fake_mode)):
        return _trusting_the_cpu(build)


def _trusting_the_cpu(build):
    """``build()`` with inductor taking the CPU's vector instructions from what the CPU reports
    (``cpp.vec_isa_ok``), not from test programs it compiles and loads for each (about 10 s of a
    cold compile on 2 cores, once per machine); where that build fails, again with the tests."""
    from torch._inductor import config as inductor_config
    from torch._inductor import cpu_vec_isa

    if inductor_config.cpp.vec_isa_ok is not None:  # the user's own setting
        return build()
    try:
        with inductor_config.patch({"cpp.vec_isa_ok": True}):
            return build()
    except Exception as e:  # noqa: BLE001 - a compiler without those instructions: inductor's own tests decide
        if "CppCompile" not in f"{type(e).__name__}: {e}":
            raise  # not the C++ build: trying again would fail the same way, at the same cost
        cpu_vec_isa.valid_vec_isa_list.cache_clear()
        return build()


def _close(a, b, slack: float = 0.0) -> bool:
    a, b = a.detach(), b.detach()
    if a.shape != b.shape:
        return False
    scale = float(b.abs().max()) if b.numel() else 0.0
    return bool(torch.isfinite(a).all() == torch.isfinite(b).all()) and bool(
        ((a - b).abs() <= 1e-3 * max(scale, 1e-6) + slack).all())


def _rng_state(device):
    return torch.get_rng_state(), (torch.cuda.get_rng_state(device) if device.type == "cuda" else None)


def _set_rng_state(state):
    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state(cuda)


def _flatten(args, kwargs):
    keys = sorted(kwargs)
    return list(args) + [kwargs[k] for k in keys], (len(args), keys)


def _unflatten(tensors, spec):
    n, keys = spec
    return tuple(tensors[:n]), dict(zip(keys, tensors[n:]))


def _key(tensors, spec):
    """What a graph is kept for: the call's structure and each input's shape, dtype and device."""
    return (spec[0], tuple(spec[1])) + tuple((tuple(t.shape), t.dtype, str(t.device)) for t in tensors)
