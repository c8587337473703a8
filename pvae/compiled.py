r"""The compiled SVI step: trace model and guide once per input shape, then run a fixed tensor program.

Pyro runs the model and guide again on every step: the handlers, the trace, the site bookkeeping
all cost Python time, and every tensor op is an eager dispatch. NumPyro traces the program once and
lets XLA compile the whole step. ``pvae.fit(..., compile="step")`` does the same in torch:

1. one step of the objective's differentiable loss *and its gradients* with respect to every
   parameter is recorded with ``make_fx`` into a graph of tensor operations (Pyro's handlers run
   once, while recording);
2. the graph is replayed once under the random state of an eager step, and must give the eager
   loss and gradients *bit for bit*; else the program has control flow that depends on the data,
   and the step stays eager (one line says so);
3. the graph is compiled by inductor, and each step calls it. Its random draws are random ops in
   the graph, fresh on every call.

A graph is kept per input shape (a last partial batch gets its own). The optimizer step, gradient
clipping and the non-finite check stay as they are.

What keeps a step eager, each said in one line: an objective whose loss is not a pure tensor
function (Pyro's ``Trace_ELBO`` calls ``.item()``; the ``"elbo"`` objective is therefore computed
as pvae's per-datapoint ELBO, which has the same value and gradient wherever every latent is
reparameterized), KL warm-up or a model's ``anneal`` schedule (a value that changes every step),
parameters in Pyro's param store, multi-process training, and a traced step that differs from the
eager one.
"""

from __future__ import annotations

import contextlib
import warnings

import pyro
import torch
from torch.nn.utils.stateless import _reparametrize_module

from . import program as program_module
from .objectives import ImportanceWeightedELBO


class PerDatapointELBO(ImportanceWeightedELBO):
    r"""The ELBO from pvae's per-datapoint log-weights: L_b = (1/k) sum_i log w_i. Its value and
    reparameterized gradient equal ``Trace_ELBO``'s; it is a pure tensor function, so it traces."""

    def __init__(self, num_particles: int = 1, **kwargs):
        super().__init__(num_particles=num_particles, alpha=0.0, **kwargs)

    def bound(self, log_w):
        return log_w.mean(0)


def traceable(elbo):
    """The objective the compiled step traces (``Trace_ELBO`` -> `PerDatapointELBO`), or None."""
    if isinstance(elbo, ImportanceWeightedELBO):
        return elbo
    if type(elbo).__name__ == "Trace_ELBO":
        return PerDatapointELBO(num_particles=elbo.num_particles)
    return None


class CompiledStep:
    """``step(*args, **kwargs) -> loss`` with the gradients written into ``p.grad`` and their norm
    kept in ``grad_norm``: a traced and compiled graph per input shape, or the eager ``fallback``
    (``grad_norm`` None) where one cannot be made."""

    def __init__(self, pair, elbo, params, fallback, compile_graph: bool = True, say=print):
        self.pair, self.params, self.fallback, self.compile_graph, self.say = pair, params, fallback, compile_graph, say
        self.elbo = traceable(elbo)
        self.names = [n for n, p in pair.named_parameters() if p.requires_grad]
        self.graphs: dict = {}
        self.grad_norm = None
        self.blocked: str | None = None
        if self.elbo is None:
            self.blocked = f"{type(elbo).__name__} is not a pure tensor function of the parameters"
        elif len(self.names) != len(params):
            self.blocked = "the program has parameters in Pyro's param store"
        if self.blocked:
            say(f"compile='step': the step stays eager: {self.blocked}")

    def _loss_and_grads(self, *flat, spec):
        """The recorded function: ``(*params, *inputs) -> (loss, |grad|^2, *grads)``."""
        params = list(flat[:len(self.params)])
        args, kwargs = _unflatten(flat[len(self.params):], spec)
        with _reparametrize_module(self.pair, dict(zip(self.names, params))), pyro.validation_enabled(False):
            loss = self.elbo.differentiable_loss(self.pair.model, self.pair.guide, *args, **kwargs)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        grads = [g if g is not None else torch.zeros_like(p) for g, p in zip(grads, params)]
        return (loss, sum((g * g).sum() for g in grads), *grads)

    def _build(self, args, kwargs):
        from torch.fx.experimental.proxy_tensor import make_fx

        tensors, spec = _flatten(args, kwargs)
        live = [p.detach().requires_grad_() for p in self.params]

        def fn(*flat):
            return self._loss_and_grads(*flat, spec=spec)

        state = _rng_state(tensors[0].device)
        try:
            eager = fn(*live, *tensors)
            _set_rng_state(state)
            program_module.TRACING = True
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                graph = make_fx(fn)(*live, *tensors)
        except Exception as e:  # noqa: BLE001 - anything that will not trace keeps the step eager
            self.say(f"compile='step': the step stays eager for inputs of shape {tuple(tensors[0].shape)}: "
                     f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}")
            return None
        finally:
            program_module.TRACING = False
        inputs = [p.detach() for p in self.params] + list(tensors)
        _set_rng_state(state)
        with torch.no_grad():
            replay = graph(*inputs)
        if not all(torch.equal(a, b.detach()) for a, b in zip(replay, eager)):
            _set_rng_state(state)
            self.say("compile='step': the step stays eager: its traced graph differs from the eager step (control "
                     "flow that depends on the data?)")
            return None
        if self.compile_graph:
            graph = compile_graph(graph, inputs, state, replay, self.say)
        _set_rng_state(state)  # the step itself draws afresh
        return graph

    def __call__(self, *args, **kwargs):
        if self.blocked:
            return self.fallback(*args, **kwargs)
        key = _key(args, kwargs)
        if key not in self.graphs:
            self.graphs[key] = self._build(args, kwargs)
        graph = self.graphs[key]
        if graph is None:
            self.grad_norm = None
            return self.fallback(*args, **kwargs)
        tensors, _ = _flatten(args, kwargs)
        with torch.no_grad():
            out = graph(*[p.detach() for p in self.params], *tensors)
        for p, g in zip(self.params, out[2:]):
            p.grad = g
        self.grad_norm = out[1].sqrt()
        return out[0].detach()


def compile_graph(graph, inputs, state, expected, say=print):
    """Inductor's compilation of a recorded graph, checked against ``expected`` (the graph's own
    outputs for ``inputs`` under the random state ``state``).

    On the CPU the products run on the faster of MKL and oneDNN ([`pvae.matmul`][pvae.matmul]).
    Random ops stay torch's own (``fallback_random``), so the compiled graph draws what the eager
    step draws and can be checked: every output within 1e-3 of the largest entry of the expected
    one (products summed in another order differ by about 1e-6). A graph that fails the check, or
    does not compile, runs uncompiled, said in one line."""
    import copy

    from torch._inductor import config as inductor_config

    from .matmul import onednn_lowering, use_fastest_matmuls

    tries = []
    if inputs[0].device.type == "cpu":
        fast = copy.deepcopy(graph)
        if use_fastest_matmuls(fast):
            tries.append((fast, onednn_lowering))
    tries.append((graph, contextlib.nullcontext))
    reason = ""
    for candidate, context in tries:
        try:
            with context(), inductor_config.patch(fallback_random=True), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                compiled = _compile_fx(candidate, list(inputs))
                _set_rng_state(state)
                with torch.no_grad():
                    got = compiled(*inputs)
        except Exception as e:  # noqa: BLE001 - a graph inductor cannot compile still runs, uncompiled
            reason = f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
            continue
        if all(_close(a, b) for a, b in zip(got, expected)):
            return compiled
        reason = "its compiled graph does not reproduce the traced one"
    say(f"compile='step': the step runs traced but uncompiled: {reason}")
    return graph


def _compile_fx(graph, inputs):
    try:
        from torch._inductor.compile_fx import compile_fx
    except ImportError:  # pragma: no cover - an inductor without it: through dynamo (a guard check per call)
        return torch.compile(graph, dynamic=False)
    return compile_fx(graph, inputs)


def _close(a, b) -> bool:
    a, b = a.detach(), b.detach()
    if a.shape != b.shape:
        return False
    scale = float(b.abs().max()) if b.numel() else 0.0
    return bool(torch.isfinite(a).all() == torch.isfinite(b).all()) and bool(
        ((a - b).abs() <= 1e-3 * max(scale, 1e-6)).all())


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


def _key(args, kwargs):
    tensors, spec = _flatten(args, kwargs)
    return (spec[0], tuple(spec[1])) + tuple((tuple(t.shape), t.dtype, str(t.device)) for t in tensors)
