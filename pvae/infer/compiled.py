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
3. with ``fit``'s Adam optimizer, the Adam update (clipping included, skipped where the loss or
   gradient norm is not finite) joins the graph, on the optimizer's own state tensors;
4. the graph is compiled by inductor (products on the faster of MKL and oneDNN, see
   [`pvae.infer.matmul`][pvae.infer.matmul]) and must reproduce the recorded graph; each step calls it. Its
   random draws are torch's own random ops, fresh on every call. On CUDA it is captured in one
   CUDA graph after warm-up (`CapturedGraph`).

With dynamic binarization (``draws``, a `pvae.data.draws.DynamicDraws`) the step takes the grey
batch and the graph draws its binarization first, from the draws' counter (one fused kernel, the
values the eager step draws from the same counter).

A graph is kept per input shape (a last partial batch gets its own).
[`pvae.infer.compiled_eval`][pvae.infer.compiled_eval] does the same for evaluation's pass of log-weights.

What keeps a step eager, each said in one line: an objective whose loss is not a pure tensor
function (Pyro's ``Trace_ELBO`` calls ``.item()``; the ``"elbo"`` objective is therefore computed
as pvae's per-datapoint ELBO, which has the same value and gradient wherever every latent is
reparameterized), KL warm-up or a model's ``anneal`` schedule (a value that changes every step),
parameters in Pyro's param store, multi-process training, a step that updates module buffers
(BatchNorm running statistics), and a traced step that differs from the eager one.
"""

from __future__ import annotations

import warnings

import pyro
import torch
from torch.nn.utils.stateless import _reparametrize_module

from pvae.infer.graphs import (
    CapturedGraph,
    _flatten,
    _key,
    _set_rng_state,
    _unflatten,
    compile_graph,
    cuda_capture,
    one_fake_mode,
    record,
)
from pvae.data.draws import bernoulli
from pvae.infer.iwae import ImportanceWeightedELBO


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
    """``step(*args, **kwargs) -> loss``: a traced and compiled graph per input shape, or the eager
    ``fallback`` where one cannot be made.

    Without ``optimizer`` the graph writes the gradients into ``p.grad`` and keeps their norm in
    ``grad_norm``. With a plain ``torch.optim.Adam`` as ``optimizer`` the graph also takes the
    Adam step (with gradient clipping at ``clip_grad``) on the optimizer's own state tensors, in
    place, and only where the loss and gradient norm are finite: ``updated`` is then True, and the
    caller takes no optimizer step. After a fallback call ``grad_norm`` is None and ``updated``
    False."""

    def __init__(self, pair, elbo, params, fallback, compile_graph: bool = True, say=print, optimizer=None,
                 clip_grad: float | None = None, capture: bool | None = None, capture_backend=None, on_compiled=None,
                 draws=None):
        self.draws = draws  # dynamic binarization (`pvae.data.draws.DynamicDraws`): drawn inside the graph
        self.pair, self.params, self.fallback, self.compile_graph, self.say = pair, params, fallback, compile_graph, say
        self.on_compiled = on_compiled  # called once a graph has compiled (fit remembers it: the next compile is warm)
        self.elbo = traceable(elbo)
        self.names = [n for n, p in pair.named_parameters() if p.requires_grad]
        self.graphs: dict = {}
        self.grad_norm, self.updated = None, False
        self.optimizer = optimizer if optimizer is not None and _plain_adam(optimizer, params) else None
        self.clip_grad = clip_grad
        self.capture, self.capture_backend = capture, capture_backend
        self._lr_tensor, self._lr_value = None, None
        self._state, self._changes = None, 0  # the Python values the graphs were recorded with (`follow_state`)
        self.blocked: str | None = None
        if self.elbo is None:
            self.blocked = f"{type(elbo).__name__} is not a pure tensor function of the parameters"
        elif len(self.names) != len(params):
            self.blocked = "the program has parameters in Pyro's param store"
        if self.blocked:
            say(f"compile='step': the step stays eager: {self.blocked}")

    #: the caller passes the grey batch ``draws.x`` and this step binarizes it (`DynamicDraws`)
    draws_inside = property(lambda self: self.draws is not None)

    def _loss_and_grads(self, *flat, spec, at=None):
        """The recorded function: ``(*params, *inputs) -> (loss, |grad|^2, *grads)``; with ``at``, the
        first input is the draws' start and input ``at`` the grey batch, binarized here."""
        params, tensors = list(flat[:len(self.params)]), list(flat[len(self.params):])
        if at is not None:
            start, tensors = tensors[0], tensors[1:]
            tensors[at] = bernoulli(tensors[at], start)
        args, kwargs = _unflatten(tensors, spec)
        with _reparametrize_module(self.pair, dict(zip(self.names, params))), pyro.validation_enabled(False):
            loss = self.elbo.differentiable_loss(self.pair.model, self.pair.guide, *args, **kwargs)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        grads = [g if g is not None else torch.zeros_like(p) for g, p in zip(grads, params)]
        return (loss, sum((g * g).sum() for g in grads), *grads)

    def _build(self, args, kwargs, at=None):
        tensors, spec = _flatten(args, kwargs)
        if at is not None:
            tensors = [self.draws.start] + tensors
        live = [p.detach().requires_grad_() for p in self.params]
        inputs = [p.detach() for p in self.params] + list(tensors)
        buffers = [b.detach().clone() for b in self.pair.buffers()]
        before = python_state(self.pair)
        said: list = []  # said after the buffer check, which explains a differing recording first
        recorded = record(lambda *flat: self._loss_and_grads(*flat, spec=spec, at=at), live + list(tensors), inputs,
                          said.append, "compile='step': the step stays eager")
        moved = [b for b, was in zip(self.pair.buffers(), buffers) if not torch.equal(b, was)]
        with torch.no_grad():
            for b, was in zip(self.pair.buffers(), buffers):
                b.copy_(was)  # recording is not a training step
        if moved:
            self.say("compile='step': the step stays eager: a step updates the module's buffers (BatchNorm running "
                     "statistics?), which a recorded graph would hold fixed")
            return None
        changed = state_change(before, python_state(self.pair))
        if changed:  # (recording ran the program twice: the values it left are not an eager step's)
            self.blocked = f"the program changes its own Python state as it runs ({changed})"
            self.say(f"compile='step': the step stays eager: {self.blocked}, which a recorded graph would hold fixed")
            return None
        if recorded is None:
            for line in said:
                self.say(line)
            return None
        graph, state, replay = recorded
        updating, n, slack = self.optimizer is not None, len(self.params), None
        if updating:  # the Adam step joins the graph: one program per step
            lr = float(self.optimizer.param_groups[0]["lr"])
            graph, inputs, replay = self._with_update(graph, inputs, state)
            slack = [0.0] * (len(replay) - len(inputs)) + [2.0 * lr] * n + [0.0] * (len(inputs) - n)
        if self.compile_graph:
            traced, graph = graph, compile_graph(graph, inputs, state, replay, self.say, mutates=updating, slack=slack)
            if graph is not traced and self.on_compiled is not None:
                self.on_compiled()
        _set_rng_state(state)  # the step itself draws afresh
        capture = self.capture if self.capture is not None else inputs[0].device.type == "cuda"
        if updating and capture:  # one CUDA graph per step: params and Adam state stay where they are
            batch = set(range(n, n + len(tensors))) | {len(inputs) - 1}  # the batch and the learning rate
            graph = CapturedGraph(graph, batch, backend=self.capture_backend or cuda_capture)
        return graph, updating

    def _adam_state(self):
        """The optimizer's state tensors (made as ``torch.optim.Adam`` makes them on its first step)."""
        state = self.optimizer.state
        for p in self.params:
            if not state[p]:
                fused = bool(self.optimizer.defaults.get("fused"))
                state[p]["step"] = torch.zeros((), dtype=torch.float32, device=p.device if fused else "cpu")
                state[p]["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state[p]["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return ([state[p]["exp_avg"] for p in self.params] + [state[p]["exp_avg_sq"] for p in self.params]
                + [state[p]["step"] for p in self.params])

    def _lr(self, device):
        """The learning rate as a tensor on the device, refilled only when it changes (a kernel
        launch, not a host-to-device copy that would wait for the GPU)."""
        lr = float(self.optimizer.param_groups[0]["lr"])
        if self._lr_tensor is None or self._lr_tensor.device != device:
            self._lr_tensor, self._lr_value = torch.full((), lr, device=device), lr
        elif lr != self._lr_value:
            self._lr_tensor.fill_(lr)
            self._lr_value = lr
        return self._lr_tensor

    def _with_update(self, graph, inputs, state):
        """``graph`` (loss and gradients) followed by the Adam step, recorded as one graph of
        ``(*params, *tensors, *adam_state, lr)`` that updates params and state in place and returns
        ``(loss, grad_norm, *bias_correction_scalars)``; with the inputs and the outputs expected
        for them."""
        from torch.fx.experimental.proxy_tensor import make_fx

        n, group = len(self.params), self.optimizer.param_groups[0]
        (beta1, beta2), eps, clip = group["betas"], group["eps"], self.clip_grad

        def step(*flat):
            params, adam, lr = flat[:n], flat[len(flat) - 1 - 3 * n:-1], flat[-1]
            out = graph(*flat[:len(flat) - 1 - 3 * n])
            loss, norm, grads = out[0], out[1].sqrt(), out[2:]
            finite = torch.isfinite(loss) & torch.isfinite(norm)
            if clip:
                coef = torch.clamp(clip / (norm + 1e-6), max=1.0)
                grads = [g * coef for g in grads]
            scalars = []
            for i, (p, g) in enumerate(zip(params, grads)):
                m, v, t = adam[i], adam[n + i], adam[2 * n + i]
                t1 = t + 1
                m1 = torch.lerp(m, g, 1 - beta1)
                v1 = v * beta2 + (1 - beta2) * g * g
                step_size = (lr / (1 - torch.pow(beta1, t1.double()))).float()  # float64, as torch's fused Adam
                root2 = (1 - torch.pow(beta2, t1.double())).sqrt().float()
                scalars += [step_size, root2]
                p1 = p - step_size * m1 / (v1.sqrt() / root2 + eps)
                for old, new in ((p, p1), (m, m1), (v, v1), (t, t1)):
                    old.copy_(torch.where(finite, new, old))
            # the per-tensor scalars are outputs too: inductor then computes each once, where it would
            # otherwise inline the float64 powers into every element's update (0.5 ms a step here)
            return (loss, norm, *scalars)

        full = inputs + self._adam_state() + [self._lr(inputs[0].device)]
        check = [t.clone() for t in full]
        _set_rng_state(state)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with one_fake_mode():  # one mode for every node's shapes, as in `record`
                recorded = make_fx(step)(*check)
        check = [t.clone() for t in full]
        _set_rng_state(state)
        expected = list(recorded(*check)) + check  # outputs, then every input as the step leaves it
        return recorded, full, expected

    def follow_state(self) -> None:
        """Called between epochs: where a Python value that the graphs hold fixed has changed since
        they were recorded (``model.beta`` set by a KL-annealing callback), the graphs are dropped
        and the next call records afresh; a value that changes a second time keeps the step eager
        from then on (each recording costs a compilation), said in one line."""
        if self.blocked or self._state is None:
            return
        now = python_state(self.pair)
        changed = state_change(self._state, now)
        if changed is None:
            return
        self.graphs.clear()
        self._state = now
        self._changes += 1
        if self._changes > 1:
            self.blocked = f"a value the program reads from Python changes during training ({changed})"
            self.say(f"compile='step': the step runs eager from now on: {self.blocked}; a recorded graph holds such "
                     "values fixed (make it a tensor the step takes, or leave it constant, to compile)")

    def _fallback(self, tensors, spec, at):
        args, kwargs = _drawn(self.draws, tensors, spec, at)
        return self.fallback(*args, **kwargs)

    def __call__(self, *args, **kwargs):
        tensors, spec = _flatten(args, kwargs)
        at = None  # which input is the grey batch to binarize (`draws_inside`), if any
        if self.draws is not None and self.draws.x is not None:
            at = next((i for i, t in enumerate(tensors) if t is self.draws.x), None)
        if self.blocked:
            return self._fallback(tensors, spec, at)
        key = _key(tensors, spec) + (at,)
        if key not in self.graphs:
            if self._state is None:
                self._state = python_state(self.pair)
            self.graphs[key] = self._build(args, kwargs, at)
        built = self.graphs[key]
        if built is None:
            self.grad_norm, self.updated = None, False
            return self._fallback(tensors, spec, at)
        graph, updating = built
        inputs = [p.detach() for p in self.params] + ([self.draws.start] if at is not None else []) + list(tensors)
        with torch.no_grad():
            if updating:
                loss, norm = graph(*inputs, *self._adam_state(), self._lr(inputs[0].device))[:2]
                self.grad_norm, self.updated = norm.clone(), True  # a captured graph's outputs are rewritten
                return loss.clone()                                # by its next replay
            out = graph(*inputs)
        for p, g in zip(self.params, out[2:]):
            p.grad = g
        self.grad_norm, self.updated = out[1].sqrt(), False
        return out[0].detach()


def _drawn(draws, tensors, spec, at):
    """``(args, kwargs)`` with input ``at`` (the grey batch) binarized eagerly by ``draws``."""
    if at is None:
        return _unflatten(tensors, spec)
    tensors = list(tensors)
    tensors[at] = draws(tensors[at])
    return _unflatten(tensors, spec)


_SCALARS = (int, float, bool, str, type(None))


def python_state(pair) -> dict:
    """The Python values a program may read that a recorded graph would hold fixed: every plain
    number, flag or string attribute of the pair's modules (``model.beta``, ``training``), and the
    numbers that the model and guide functions read from their closures and module globals."""
    state = {}
    for name, module in pair.named_modules():
        for key, value in vars(module).items():
            if type(value) in _SCALARS and not key.startswith("_is_full_backward"):
                state[f"{name}.{key}" if name else key] = value
    for role in ("model", "guide"):
        fn = getattr(pair, f"_{role}", None) or getattr(pair, role, None)
        fn = getattr(fn, "__func__", fn)
        code = getattr(fn, "__code__", None)
        if code is None:
            continue
        for cell_name, cell in zip(code.co_freevars, fn.__closure__ or ()):
            try:
                value = cell.cell_contents
            except ValueError:  # an empty cell
                continue
            if type(value) in _SCALARS:
                state[f"{role} closure {cell_name}"] = value
        for global_name in code.co_names:
            value = fn.__globals__.get(global_name, None)
            if type(value) in _SCALARS and value is not None:
                state[f"global {global_name}"] = value
    return state


def state_change(before: dict, after: dict) -> str | None:
    """The first value that differs between two `python_state` snapshots, as ``name: a -> b``."""
    for key in [*before, *(k for k in after if k not in before)]:
        if before.get(key) != after.get(key) or type(before.get(key)) is not type(after.get(key)):
            return f"{key}: {before.get(key)!r} -> {after.get(key)!r}"
    return None


def _plain_adam(optimizer, params) -> bool:
    """``torch.optim.Adam`` with one group over ``params``, no weight decay, amsgrad or maximize:
    the update `CompiledStep` writes into its graph."""
    if type(optimizer) is not torch.optim.Adam or len(optimizer.param_groups) != 1:
        return False
    group = optimizer.param_groups[0]
    same = len(group["params"]) == len(params) and all(a is b for a, b in zip(group["params"], params))
    return (same and not group["weight_decay"] and not group["amsgrad"]
            and not group["maximize"] and not group.get("differentiable") and not group.get("capturable"))
