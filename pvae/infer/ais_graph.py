"""AIS's inner loop as one traced graph per batch.

Every HMC leapfrog step of AIS ([`pvae.infer.ais.ais_log_likelihood`][pvae.infer.ais.ais_log_likelihood]) needs the tempered target

.. math:: \\log f_\\beta(u) = \\log f_0(z) + \\beta (\\log p(x, z) - \\log f_0(z)) + \\log |dz/du|,
          \\qquad z = T(u),

and its gradient in u. Run eagerly, each evaluation re-traces model and guide through Pyro's
effect handlers and re-runs the guide's nets on x, though q(z|x)'s parameters do not change
while the chains move. `TargetGraph` records the whole evaluation (Pyro program, transforms and
the backward pass) once per batch with ``make_fx``, as a pure function of u, and
folds everything that does not depend on u (the guide's nets on x, the parameters' own
arithmetic) into constants computed once: NumPyro's ``log_density`` traced into a function of
the draws, with loop-invariant work hoisted. The first call is checked against the eager
evaluation on the same u; a program that does not trace, draws random numbers inside the
target, or gives other numbers stays eager (and one line says why).
"""

from __future__ import annotations

import warnings

import pyro
import torch

# density evaluations (steps x leapfrog) x chains x datapoints from which AIS compiles its target through
# inductor by default, by what this machine compiled before: this very graph (inductor's on-disk cache
# holds it: about 1 s once inductor is imported), this model's AIS target at other shapes, never (about
# 18 s on 2 cores). Compiled, an evaluation of the IWAE paper's net costs 0.4-0.75x what it does traced
# (the products remain: about 8 of its 13.7 ms).
COMPILE_FROM = {"graph": 700_000, "warm": 2_000_000, "cold": 6_000_000}


#: AIS's gradient only steers HMC's proposals: the Metropolis test and the AIS weights use the log
#: densities, and a leapfrog step with any deterministic gradient map is still reversible and
#: volume-preserving, so every transition still leaves its tempered target invariant and the
#: estimate stays an unbiased one of p(x). So, on a CPU that multiplies bfloat16 natively and where
#: it is faster (`pvae.infer.matmul.bf16_faster`), the products that feed only the gradient take
#: bfloat16 inputs (`steering_products`); the log densities stay float32, bit for bit.
STEERING_BF16 = True


def eager_terms(target, start: str, u: dict) -> tuple:
    """``(log q, log p(z), log p(x, z), log |dz/du|, *grad_u (log f_0 + log |dz/du|), *grad_u (log p(x, z) - log f_0))``
    for one batch at unconstrained latents u: four (C, B) tensors, then two gradients per site
    (shaped like u). The tempered target at any beta is a sum of these
    (`tempered`), so one evaluation serves every temperature."""
    v = {n: x.detach().requires_grad_(True) for n, x in u.items()}
    with torch.enable_grad(), pyro.validation_enabled(False):
        q, pz, jnt, ldj = target.parts(v)
        base = q if start == "guide" else pz
        ins = list(v.values())
        near = torch.autograd.grad((base + ldj).sum(), ins, retain_graph=True, allow_unused=True)
        far = torch.autograd.grad((jnt - base).sum(), ins, allow_unused=True)
    grads = [torch.zeros_like(x) if g is None else g for x, g in zip(ins + ins, near + far)]
    return tuple(t.detach() for t in (q, pz, jnt, ldj)) + tuple(grads)


def tempered(terms: tuple, start: str, beta: float, names: list) -> tuple:
    """log f_beta(u) and its gradient per site from `eager_terms`'s tuple."""
    q, pz, jnt, ldj = terms[:4]
    base = q if start == "guide" else pz
    k = len(names)
    near, far = terms[4:4 + k], terms[4 + k:]
    return base + ldj + beta * (jnt - base), {n: a + beta * b for n, a, b in zip(names, near, far)}


def _seeded(graph) -> str | None:
    """The first random op of a recorded graph (a draw inside the target), or None."""
    for node in graph.graph.nodes:
        tags = getattr(node.target, "tags", ())
        if node.op == "call_function" and torch.Tag.nondeterministic_seeded in tags:
            return str(node.target)
    return None


def steering_products(gm, values: int = 4) -> int:
    """Rewrite, in place, the float32 CPU products (``aten.mm``, ``aten.addmm``) of ``gm`` that
    no one of its first ``values`` outputs depends on, to run on bfloat16 inputs (float32
    accumulation and result) where `pvae.infer.matmul.bf16_faster` says so; returns how many."""
    from pvae.infer.matmul import bf16_faster, bf16_supported, replace

    if not bf16_supported():
        return 0
    aten = torch.ops.aten
    out = next(n for n in gm.graph.nodes if n.op == "output")
    values_need, todo = set(), [a for a in out.args[0][:values] if isinstance(a, torch.fx.Node)]
    while todo:  # every node a log density depends on
        node = todo.pop()
        if node not in values_need:
            values_need.add(node)
            todo.extend(node.all_input_nodes)
    graph, done = gm.graph, 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node in values_need or node.kwargs:
            continue
        if node.target not in (aten.mm.default, aten.addmm.default):
            continue
        bias, (a, b) = (None, node.args) if node.target is aten.mm.default else (node.args[0], node.args[1:])
        metas = [n.meta.get("val") if isinstance(n, torch.fx.Node) else None for n in (a, b)]
        if any(not isinstance(m, torch.Tensor) or m.dtype != torch.float32 or m.device.type != "cpu" for m in metas):
            continue
        if not bf16_faster(*metas):
            continue
        with graph.inserting_before(node):
            a16, b16 = (graph.call_function(aten._to_copy.default, (t,), {"dtype": torch.bfloat16}) for t in (a, b))
            new = graph.call_function(aten._to_copy.default, (graph.call_function(aten.mm.default, (a16, b16)),),
                                      {"dtype": torch.float32})
            if bias is not None:
                new = graph.call_function(aten.add.Tensor, (new, bias))
        replace(graph, node, new)
        done += 1
    if done:
        graph.lint()
        gm.recompile()
    return done


def _agree(got, want, steering: bool) -> bool:
    """The traced graph's terms against the eager ones: the log densities to 1e-4; the gradients
    too, or, where their products are in bfloat16, to 3% of each gradient's largest entry."""
    for i, (a, b) in enumerate(zip(got, want)):
        if a.shape != b.shape:
            return False
        if i < 4 or not steering:
            if not torch.allclose(a, b, rtol=1e-4, atol=1e-4):
                return False
        elif not bool(((a - b).abs() <= 3e-2 * float(b.abs().max()) + 1e-4).all()):
            return False
    return True


class TargetGraph:
    """``u -> eager_terms(...)`` for one `Target`, traced on the first call (see the
    module docstring); ``traced`` says whether the graph is in use."""

    def __init__(self, target, start: str, say=None, compile: bool = False, on_compiled=None):
        self.target, self.start, self.compile, self.on_compiled = target, start, compile, on_compiled
        self.names = [n for n, _ in target.sites]
        self.say = say or (lambda line: warnings.warn(line, stacklevel=4))
        self.graph, self.traced, self.tried, self.compiled, self.constants = None, False, False, False, ()

    def _flat(self, *u):
        return eager_terms(self.target, self.start, dict(zip(self.names, u)))

    def _trace(self, u: dict) -> None:
        from torch.fx.experimental.proxy_tensor import make_fx

        from pvae.infer import traces
        from pvae.infer.graphs import one_fake_mode

        self.tried = True
        inputs = [u[n].contiguous() for n in self.names]  # one graph for draws and expanded starting points
        try:
            traces.TRACING = True
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with one_fake_mode():
                    graph = make_fx(self._flat)(*inputs)
        except Exception as e:  # noqa: BLE001 - a program that will not trace stays eager
            self.say(f"AIS runs its target eagerly: tracing it failed ({type(e).__name__}: "
                     f"{str(e).splitlines()[0][:120] if str(e) else ''})")
            return
        finally:
            traces.TRACING = False
        drawn = _seeded(graph)
        if drawn is not None:
            self.say(f"AIS runs its target eagerly: the program draws random numbers inside it ({drawn})")
            return
        steering = STEERING_BF16 and inputs[0].device.type == "cpu" and steering_products(graph) > 0
        plain = graph  # compile_graph makes its own product choice
        if inputs[0].device.type == "cpu" and not self.compile:  # products on the faster of MKL and oneDNN,
            from pvae.infer.matmul import use_fastest_matmuls  # as compiled graphs have them

            use_fastest_matmuls(graph)
        folded = _fold(graph)
        with torch.no_grad():
            got = folded(*inputs)
        want = self._flat(*inputs)
        if not _agree(got, want, steering):
            self.say("AIS runs its target eagerly: its traced graph gives other numbers than the program "
                     "(control flow that depends on the latents?)")
            return
        self.graph, self.traced = folded, True
        if self.compile:
            self._compile(folded, inputs, got, plain)

    def _compile(self, folded, inputs, expected, plain) -> None:
        """The folded graph through inductor, its folded constants passed in as inputs (`lifted`),
        so that every batch of one shape runs one compiled graph; kept per process in `_KEPT`.
        Where it would not compile, the traced graph (``plain``, unfolded) runs with its products
        on the faster library, as it does when no compile is asked for."""
        import copy

        from pvae.infer.graphs import _rng_state, compile_graph
        from pvae.infer.matmul import use_fastest_matmuls

        body, constants = lifted(folded)
        key = (canonical(body), tuple((tuple(t.shape), t.stride(), t.dtype, str(t.device)) for t in constants + inputs))
        if key not in _KEPT:
            with torch.no_grad():
                compiled = compile_graph(body, constants + inputs, _rng_state(inputs[0].device), list(expected),
                                         say=self.say, what="AIS's compiled target")
            while len(_KEPT) >= 8:
                _KEPT.pop(next(iter(_KEPT)))
            _KEPT[key] = None if compiled is body else compiled  # None: it did not compile (said once)
            if compiled is not body and self.on_compiled is not None:
                self.on_compiled()
        if _KEPT[key] is not None:
            self.graph, self.constants, self.compiled = _KEPT[key], tuple(constants), True
        elif inputs[0].device.type == "cpu":  # it runs traced, as for every later batch of its shape
            fast = copy.deepcopy(plain)
            if use_fastest_matmuls(fast):
                self.graph = _fold(fast)

    def __call__(self, u: dict) -> tuple:
        if not self.tried:
            device = next(iter(u.values())).device
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                self._trace(u)  # the chains draw what they would have drawn eagerly (product timing draws)
        if self.graph is None:
            return eager_terms(self.target, self.start, u)
        with torch.no_grad():  # laid out as recorded (an expanded starting point is copied once)
            return tuple(self.graph(*self.constants, *(u[n].contiguous() for n in self.names)))


def _fold(graph):
    """``graph`` with everything that does not depend on its inputs computed once, as constants."""
    from torch.fx.experimental.const_fold import split_const_subgraphs

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return split_const_subgraphs(graph)


_KEPT: dict = {}  # (lifted graph (`canonical`), input layouts) -> inductor's compiled graph (None: it would
# not compile), for this process


def canonical(gm) -> str:
    """A graph's operations and wiring without its node names (two recordings of one program
    number their nodes differently)."""
    index = {node: i for i, node in enumerate(gm.graph.nodes)}

    def arg(a):
        return torch.fx.node.map_arg(a, lambda n: f"%{index[n]}")

    return "\n".join(f"{node.op} {node.target} {arg(node.args)} {arg(node.kwargs)}" for node in gm.graph.nodes)


def lifted(folded) -> tuple:
    """``(graph module, constants)``: the const-folded graph with each constant it reads (the
    folded values, the parameters) turned into a leading input, so one compiled graph serves every
    batch whose constants differ only in value."""
    import functools
    import operator

    if getattr(folded, "has_folding_been_run", True) is False:
        folded.run_folding()
    graph, env, constants = torch.fx.Graph(), {}, []
    nodes = list(folded.graph.nodes)
    lists = {}  # a get_attr of a list of constants (the folded values) -> one input per entry

    def constant(value):
        value = value.detach()
        if value.dim() and value.shape[0] > 1 and value.stride(0) and torch.equal(value, value[:1].expand_as(value)):
            value = value[:1].expand_as(value)  # the same for every chain: read once, not once per chain
        constants.append(value)
        return graph.placeholder(f"_constant_{len(constants) - 1}")

    for node in nodes:
        if node.op == "get_attr":
            value = functools.reduce(getattr, node.target.split("."), folded)
            if isinstance(value, torch.Tensor):
                env[node] = constant(value)
            else:
                lists[node] = [constant(v) for v in value]
    for node in nodes:
        if node.op == "placeholder":
            env[node] = graph.placeholder(node.name)
    for node in nodes:
        if node.op == "call_function" and node.target is operator.getitem and node.args[0] in lists:
            env[node] = lists[node.args[0]][node.args[1]]
        elif node.op not in ("placeholder", "get_attr"):
            env[node] = graph.node_copy(node, lambda a: env[a])
    return torch.fx.GraphModule(torch.nn.Module(), graph), constants


def compile_choice(compile, pair, args, kwargs, chains: int, start: str, work: int) -> dict:
    """``ais``'s ``compile`` and ``on_compiled`` for a run of ``work`` evaluations x chains x
    datapoints: ``compile`` as given, or (None) whether the run reaches `COMPILE_FROM` at the tier
    of what this machine compiled before; a compile is remembered for the next run's choice. The
    thresholds are CPU measurements: on another device None stays traced (``compile=True`` still
    compiles there)."""
    from pvae.infer.compiled_eval import eval_signature
    from pvae.util.cache import compile_tier, remember

    exact = eval_signature(pair, args, kwargs, k=f"ais|{chains}|{start}")
    broad = "ais-" + eval_signature(pair)
    on_cpu = all(t.device.type == "cpu" for t in [*args, *kwargs.values()] if isinstance(t, torch.Tensor))
    if compile is None and not on_cpu:
        compile = False
    if compile is None:
        compile = work >= COMPILE_FROM[compile_tier(exact, broad)]

    def on_compiled():
        remember(broad)
        remember(exact)

    return {"compile": bool(compile), "on_compiled": on_compiled}
