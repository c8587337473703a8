r"""Annealed importance sampling (AIS) and bidirectional Monte Carlo (BDMC) for any model/guide
pair (Neal 2001; Grosse et al. 2015; Wu et al. 2017, "On the quantitative analysis of
decoder-based generative models").

For one datapoint x, AIS moves C chains from a normalized start density f_0(z) (the guide
q(z|x), or the prior p(z) with ``start="prior"``) to the unnormalized posterior f_T(z) = p(x, z)
along the geometric path

.. math:: \log f_t(z) = \log f_0(z) + \beta_t (\log p(x, z) - \log f_0(z)),
          \qquad 0 = \beta_0 < \beta_1 < \dots < \beta_T = 1,

with z_0 ~ f_0 and, for t = 1..T, the log-weight increment (`ais`, ``log_w += ...``)

.. math:: \log w \mathrel{+}= (\beta_t - \beta_{t-1}) (\log p(x, z_{t-1}) - \log f_0(z_{t-1})),

followed by an HMC transition z_t ~ T_t(. | z_{t-1}) that leaves f_t invariant (`hmc`).
E[w] = p(x), so log (1/C) sum_c w_c is a stochastic lower bound on log p(x) (Jensen) that
tightens as T grows. HMC runs in the unconstrained space of each latent site (u = T^{-1}(z),
target density f_t(T(u)) |dT/du|), with one step size per datapoint, adapted toward an
acceptance rate of 0.65, and ``leapfrog`` steps per transition; everything is vectorized over
(chains, datapoints) through the particle dim of [`pvae.infer.program`][pvae.infer.program].

**BDMC** (`bdmc`): on data simulated from the model, (z*, x) ~ p(z) p(x|z), z* is an exact
posterior sample. Reverse AIS starts at z* with beta = 1 and anneals down to f_0; its weight has
expectation 1/p(x), so -log of it is a stochastic **upper** bound. The gap between the forward
(lower) and reverse (upper) bounds bounds the error of AIS with that schedule on such data.
"""

from __future__ import annotations

import math

import pyro
import torch
from pyro import poutine
from torch.distributions import biject_to

from pvae.infer.ais_graph import TargetGraph, compile_choice, eager_terms, tempered
from pvae.infer.sites import PARTICLES, Program, diverged_said, latent_sites
from pvae.infer.traces import _per_datapoint, fix_globals, fold, terms_from_traces
from pvae.infer.weights import mc_standard_error
from pvae.nn.nets import flush_denormals
from pvae.util.progress import bar as progress_bar

TARGET_ACCEPT = 0.65
STEPS, CHAINS, LEAPFROG = 1800, 16, 2  # the defaults: 16 x 1800 x 2 = 57,600 evaluations per datapoint
TRACE_FROM = 100  # density evaluations (steps x leapfrog) from which AIS traces its target (pvae.infer.ais_graph)
STEP_SIZE = 0.5  # HMC's first step, in units of the guide's spread (mass="guide"), then adapted per datapoint


def schedule(steps: int, kind: str = "sigmoid", delta: float = 4.0) -> torch.Tensor:
    """beta_0 = 0 < ... < beta_T = 1: ``"sigmoid"`` (Grosse et al.: dense near both ends) or
    ``"linear"``."""
    if int(steps) != steps or steps < 1:
        raise ValueError(f"AIS needs steps >= 1, got {steps}")
    t = torch.linspace(-delta, delta, int(steps) + 1, dtype=torch.float64)
    if kind == "linear":
        return torch.linspace(0.0, 1.0, int(steps) + 1, dtype=torch.float64)
    if kind != "sigmoid":
        raise ValueError(f"schedule must be 'sigmoid' or 'linear', got {kind!r}")
    s = torch.sigmoid(t)
    return (s - s[0]) / (s[-1] - s[0])


class Target:
    """The densities of one batch as functions of unconstrained latents u (one tensor per latent
    site, shaped like the site's value: (chains, ..., batch, ..., event)).

    Programs whose nets take no particle dim get their chains *folded into the batch*: every
    datapoint repeated ``chains`` times (chain-major), one plain trace, results reshaped to
    (C, B). With the nets in eval mode (BatchNorm on running statistics, no dropout) datapoints
    do not interact, so this is the same target."""

    def __init__(self, pair, program: Program, args, kwargs, chains: int, fixed=None):
        if program.prior_sites:
            raise ValueError(f"AIS needs every latent of the model in the guide; {list(program.prior_sites)} are not")
        self.pair, self.program, self.chains = pair, program, chains
        self.folded = not program.vectorize
        self.batch = next(a for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Tensor)).shape[0]
        if self.folded:  # the same chain-major repetition as folded IS
            args, kwargs = tuple(fold(a, chains) for a in args), {k: fold(v, chains) for k, v in kwargs.items()}
        self.args, self.kwargs = args, kwargs
        self.fixed, self.skip = fixed, tuple(fixed.nodes) if fixed is not None else ()
        self.num_dims = program.nesting + 1
        with torch.no_grad(), poutine.block():
            gt = self._guide_trace()
        self.sites = [(n, s) for n, s in latent_sites(gt) if n not in self.skip]
        for name, site in self.sites:
            if site["fn"].support.is_discrete:
                raise ValueError(f"AIS moves continuous latents with HMC, and site {name!r} "
                                 f"({type(site['fn']).__name__}) is discrete: use method='is'")
        self.transforms = {n: biject_to(s["fn"].support) for n, s in self.sites}
        self.template = gt

    def _particles(self):
        return pyro.plate(PARTICLES, self.chains, dim=-self.num_dims) if not self.folded else poutine.block(hide=[])

    def _guide_trace(self, values=None):
        guide = self.pair.guide
        if self.fixed is not None:
            guide = poutine.replay(guide, trace=self.fixed)
        if values is not None:
            guide = poutine.replay(guide, trace=values)
        with self._particles():
            return poutine.trace(guide).get_trace(*self.args, **self.kwargs)

    def draw(self, start: str) -> dict:
        """Unconstrained draws from f_0: the guide's (``"guide"``) or the prior's (``"prior"``)."""
        with torch.no_grad(), poutine.block():
            if start == "guide":
                tr = self._guide_trace()
            elif start == "prior":
                model = self.pair.model if self.fixed is None else poutine.replay(self.pair.model, trace=self.fixed)
                with self._particles():
                    tr = poutine.trace(model).get_trace(*self.args, **self.kwargs)
            else:
                raise ValueError(f"start must be 'guide' or 'prior', got {start!r}")
            return {n: self.transforms[n].inv(tr.nodes[n]["value"]).detach() for n, _ in self.sites}

    def _unfold(self, lp: torch.Tensor) -> torch.Tensor:
        """(1, C*B) per-datapoint terms of a folded trace -> (C, B)."""
        return lp.reshape(self.chains, self.batch) if self.folded else lp

    def per_datapoint(self, t: torch.Tensor, name: str) -> torch.Tensor:
        """Sum a tensor shaped like site ``name``'s value over all but (chain, datapoint) -> (C, B)."""
        site = dict(self.template.nodes[name])
        batch_rank = len(site["fn"].batch_shape)
        if t.dim() > batch_rank:  # event dims (transforms of an event-shaped support already sum them)
            t = t.sum(tuple(range(batch_rank - t.dim(), 0)))
        return self._unfold(_per_datapoint(dict(site, fn=_Given(t), mask=None, value=None), self.num_dims,
                                           self.program.data_plate, particle=not self.folded))

    def data_dim(self, name: str) -> int:
        site = self.template.nodes[name]
        frame = next(f for f in site["cond_indep_stack"] if f.name == self.program.data_plate)
        return site["value"].dim() - len(site["fn"].event_shape) + frame.dim

    def expand(self, t: torch.Tensor, name: str) -> torch.Tensor:
        """A (C, B) tensor viewed to broadcast against site ``name``'s value."""
        value = self.template.nodes[name]["value"]
        view = [1] * value.dim()
        if self.folded:
            view[self.data_dim(name)] = t.numel()
            return t.reshape(view)
        event = len(self.template.nodes[name]["fn"].event_shape)
        view[value.dim() - event - self.num_dims] = t.shape[0]
        view[self.data_dim(name)] = t.shape[1]
        return t.reshape(view)

    def at_chains(self, z: torch.Tensor, name: str) -> torch.Tensor:
        """One value per datapoint (site ``name`` without chains) given to every chain."""
        value = self.template.nodes[name]["value"]
        if self.folded:
            dim = self.data_dim(name) - (value.dim() - z.dim())
            return z.index_select(dim, torch.arange(self.batch, device=z.device).repeat(self.chains))
        event = len(self.template.nodes[name]["fn"].event_shape)
        return z.unsqueeze(value.dim() - event - self.num_dims).expand_as(value)

    def over_chains(self, t: torch.Tensor, name: str) -> torch.Tensor:
        """The mean over chains of a tensor shaped like site ``name``'s value, broadcast back to it."""
        value = self.template.nodes[name]["value"]
        if self.folded:  # chains are chain-major blocks of the data dim
            dd = self.data_dim(name) - (value.dim() - t.dim())
            split = t.reshape(t.shape[:dd] + (self.chains, self.batch) + t.shape[dd + 1:])
            return split.mean(dd, keepdim=True).expand_as(split).reshape(t.shape)
        cd = value.dim() - len(self.template.nodes[name]["fn"].event_shape) - self.num_dims
        return t.mean(cd, keepdim=True).expand_as(t)

    def spread(self, draws: int = 32) -> dict:
        """Per datapoint and latent coordinate, the guide's standard deviation in unconstrained
        space, from at least ``draws`` fresh guide draws (independent of the chains, so a kernel
        scaled by it leaves AIS's weights exact): HMC's diagonal mass matrix is its inverse square."""
        rounds = max(1, math.ceil(draws / self.chains))
        u = [self.draw("guide") for _ in range(rounds)]
        out = {}
        for name, _ in self.sites:
            m1 = sum(self.over_chains(d[name], name) for d in u) / rounds
            m2 = sum(self.over_chains(d[name] ** 2, name) for d in u) / rounds
            n = rounds * self.chains
            sd = ((m2 - m1 ** 2).clamp_min(0.0) * n / max(n - 1, 1)).sqrt()
            # a coordinate the guide holds (nearly) fixed keeps a thousandth of its datapoint's mean scale
            mean = self.per_datapoint(sd, name) / self.per_datapoint(torch.ones_like(sd), name)
            out[name] = torch.maximum(sd, 1e-3 * self.expand(mean, name).expand_as(sd)).clamp_min(1e-8)
        return out

    def parts(self, u: dict):
        """``(log f_0 under both starts, log p(x, z), log |dz/du|)``: the guide's log q, the model's
        log p(z), the joint, the Jacobian, each (C, B)."""
        z, log_det = {}, 0.0
        for name, _ in self.sites:
            tf = self.transforms[name]
            z[name] = tf(u[name])
            log_det = log_det + self.per_datapoint(tf.log_abs_det_jacobian(u[name], z[name]), name)
        values = poutine.Trace()
        for name, site in self.template.nodes.items():
            if name in z:
                values.add_node(name, **dict(site, value=z[name]))
        gt = self._guide_trace(values)
        with self._particles():
            mt = poutine.trace(poutine.replay(self.pair.model, trace=gt)).get_trace(*self.args, **self.kwargs)
        if self.folded:
            t = terms_from_traces(mt, gt, 1, self.program.nesting, self.program.data_plate, self.skip, particle=False)
        else:
            t = terms_from_traces(mt, gt, self.chains, self.program.nesting, self.program.data_plate, self.skip)
        u_ = self._unfold
        return u_(t.log_qz), u_(t.log_pz), u_(t.log_px_z + t.log_pz), log_det


class _Given:
    """A stand-in distribution whose log_prob is a given tensor (to reuse the per-datapoint sum)."""

    def __init__(self, t):
        self.t = t

    def log_prob(self, value):
        return self.t


def hmc(u: dict, log_target, step: torch.Tensor, leapfrog: int, target: Target, scale: dict | None = None, *,
        value_and_grad=None, current=None):
    """One HMC transition for every (chain, datapoint) at once: ``log_target(u) -> (C, B)``,
    ``step`` (C, B) step sizes, ``scale`` (per site, shaped like u, or None for ones) the diagonal
    mass matrix M = scale^-2 (momenta p ~ N(0, M), kinetic energy p^T M^-1 p / 2), so a step of 1
    moves each coordinate by about its scale. Returns the new u, its log target and the acceptance
    indicator. ``value_and_grad(u) -> (log target, {site: gradient})`` may stand in for
    ``log_target`` (AIS's traced graph), and ``current`` be that pair at ``u``, already known."""
    if value_and_grad is None:
        def value_and_grad(v):
            v = {n: x.detach().requires_grad_(True) for n, x in v.items()}
            with torch.enable_grad():
                lp = log_target(v)
                grads = torch.autograd.grad(lp.sum(), list(v.values()))
            return lp.detach(), dict(zip(v, (g.detach() for g in grads)))

    s = scale if scale is not None else {n: torch.ones_like(x) for n, x in u.items()}

    def kinetic(p):
        return sum(0.5 * target.per_datapoint((x * s[n]) ** 2, n) for n, x in p.items())

    lp0, g = current if current is not None else value_and_grad(u)
    eps = {n: target.expand(step, n) for n in u}
    p = {n: torch.randn_like(x) / s[n] for n, x in u.items()}
    h0 = -lp0 + kinetic(p)
    v = dict(u)
    p = {n: p[n] + 0.5 * eps[n] * g[n] for n in u}
    for i in range(leapfrog):
        v = {n: v[n] + eps[n] * s[n] ** 2 * p[n] for n in u}
        lp, g = value_and_grad(v)
        if i < leapfrog - 1:
            p = {n: p[n] + eps[n] * g[n] for n in u}
    p = {n: p[n] + 0.5 * eps[n] * g[n] for n in u}
    h1 = -lp + kinetic(p)
    log_accept = torch.clamp(h0 - h1, max=0.0)
    log_accept = torch.where(torch.isfinite(log_accept), log_accept, torch.full_like(log_accept, -math.inf))
    accept = torch.rand_like(log_accept).log() < log_accept
    new = {n: torch.where(target.expand(accept, n), v[n], u[n]) for n in u}
    return new, torch.where(accept, lp, lp0), accept


def _chosen(accepted: torch.Tensor, proposed: tuple, current: tuple, target: Target, names: list) -> tuple:
    """The terms after an HMC transition: the proposal's where it was accepted, else the old ones."""
    k = len(names)
    per_site = names + names
    return tuple(torch.where(accepted, a, b) for a, b in zip(proposed[:4], current[:4])) + tuple(
        torch.where(target.expand(accepted, n), a, b) for n, a, b in zip(per_site, proposed[4:4 + 2 * k],
                                                                          current[4:4 + 2 * k]))


def ais(target: Target, betas: torch.Tensor, *, start: str = "guide", leapfrog: int = 10, step_size: float = STEP_SIZE,
        reverse_from: dict | None = None, bar=None, mass: str = "guide", compiled: bool | None = None,
        compile: bool = False, on_compiled=None) -> torch.Tensor:
    """Per (chain, datapoint) AIS log-weights (C, B) along ``betas``: forward from f_0 (the
    module docstring), or, with ``reverse_from`` (unconstrained exact posterior draws), reverse
    from beta = 1 to 0 (log-weights whose exp has expectation 1/p(x)). ``mass="guide"``: HMC's
    diagonal mass matrix from the guide's spread per datapoint and coordinate (`Target.spread`),
    so ``step_size`` is in units of that spread; ``"identity"``: unit masses, steps in the
    unconstrained space's own units. ``compiled``: evaluate the target through one traced graph
    per batch ([`pvae.infer.ais_graph.TargetGraph`][pvae.infer.ais_graph.TargetGraph]; eager where the program will not trace); None:
    where the run makes at least `TRACE_FROM` evaluations (tracing costs about ten)."""
    if mass not in ("guide", "identity"):
        raise ValueError(f"mass must be 'guide' or 'identity', got {mass!r}")
    with torch.no_grad():
        scale = target.spread() if mass == "guide" else None
    u = target.draw(start) if reverse_from is None else reverse_from
    C, B = target.chains, None
    log_w = None
    step = None
    if compiled is None:
        compiled = (len(betas) - 1) * leapfrog >= TRACE_FROM
    terms = (TargetGraph(target, start, compile=compile, on_compiled=on_compiled) if compiled or compile
             else (lambda v: eager_terms(target, start, v)))
    names = [n for n, _ in target.sites]
    cur = None  # the terms at u: each evaluation serves every temperature (pvae.infer.ais_graph.tempered)

    seq = list(range(1, len(betas))) if reverse_from is None else list(range(len(betas) - 1, 0, -1))
    for i, t in enumerate(seq):
        if cur is None:
            cur = terms(u)
        q, pz, joint = cur[:3]
        f0 = q if start == "guide" else pz
        if log_w is None:
            B = f0.shape[1]
            log_w = torch.zeros_like(f0)
            step = torch.full((C, B), step_size, dtype=f0.dtype, device=f0.device)
        if reverse_from is None:
            log_w = log_w + float(betas[t] - betas[t - 1]) * (joint - f0)
            beta_next = float(betas[t])
        else:
            log_w = log_w + float(betas[t - 1] - betas[t]) * (joint - f0)
            beta_next = float(betas[t - 1])
        if i == len(seq) - 1:
            break  # the last transition would not change the weights
        last = []

        def value_and_grad(v, b=beta_next):
            last[:] = [terms(v)]
            return tempered(last[0], start, b, names)

        u, _, accepted = hmc(u, None, step, leapfrog, target, scale, value_and_grad=value_and_grad,
                             current=tempered(cur, start, beta_next, names))
        cur = _chosen(accepted, last[0], cur, target, names)
        rate = accepted.double().mean(0, keepdim=True)  # per datapoint, over chains
        step = (step * torch.where(rate > TARGET_ACCEPT, 1.02, 0.98).to(step.dtype)).clamp(1e-4, 10.0)
        if bar is not None:
            bar.update(1)
    return log_w


def _program_and_inputs(model, data, guide, modules, labels, data_plate, batch_size, device=None):
    from pvae.infer.inputs import _eval_inputs
    from pvae.infer.pair import as_pair
    from pvae.infer.program import check_ais, check_density, check_per_datapoint, program_of
    from pvae.util.tensors import eval_device

    pair = as_pair(model, guide, modules)
    device = eval_device(pair, device)
    inputs = _eval_inputs(data, pair, labels)
    program = program_of(pair, inputs.to(device), data_plate, batch_size)
    check_density(pair, program, "AIS's log p(x)")
    check_per_datapoint(pair, program, "AIS's log p(x)")
    check_ais(program)
    return pair, device, inputs, program


def ais_log_likelihood(model, data, *, steps: int = STEPS, chains: int = CHAINS, start: str = "guide",
                       leapfrog: int = LEAPFROG,
                       step_size: float = STEP_SIZE, schedule_kind: str = "sigmoid", guide=None, modules=None,
                       batch_size: int = 100, progress: bool = True, labels=None, data_plate=None,
                       with_se: bool = False, mass: str = "guide", device=None, compile: bool | None = None):
    """AIS estimate of log p(x), one value per datapoint (a CPU tensor of shape ``(n,)``):
    ``chains`` chains and ``steps`` annealing steps of ``leapfrog``-step HMC per datapoint, in
    batches of ``batch_size`` datapoints. Global latents are held at their guide mean, as in
    importance sampling.

    ``with_se=True`` returns ``(log_px, mc_se)``: next to each estimate its Monte Carlo standard
    error over the chains (the delta method on the chains' weights, as
    [`mc_standard_error`][pvae.infer.weights.mc_standard_error] does for importance weights;
    NaN for one chain). It measures the estimate's spread from run to run, not the bias a short
    schedule leaves (AIS stays a stochastic lower bound; `bdmc` bounds that bias). ``device``: where
    it runs, which must hold the model's parameters (None: where they are). ``compile``: run the
    traced target through inductor (one compile per batch shape, kept for the process; one that will
    not compile runs traced, said once); None: where the run pays for it (`pvae.infer.ais_graph.COMPILE_FROM`)."""
    from pvae.util.validate import check_flag, check_memory, check_number, check_positive_int

    check_positive_int("chains", chains)
    check_positive_int("leapfrog", leapfrog)
    batch_size = check_positive_int("batch_size", batch_size)
    check_number("step_size", step_size, low=0, open_low=True)
    check_flag("with_se", with_se)
    check_flag("compile", compile, allow_none=True)
    betas = schedule(steps, schedule_kind)
    pair, device, inputs, program = _program_and_inputs(model, data, guide, modules, labels, data_plate, batch_size,
                                                        device)
    row = sum(t[:1].numel() for t in [inputs.x, *inputs.args, *inputs.kwargs.values()])
    check_memory(32.0 * chains * min(batch_size, inputs.n) * row, f"AIS with {chains} chains on batches of "
                 f"{min(batch_size, inputs.n)} datapoints", f"chains ({chains}) or batch_size ({batch_size})", device)
    was = pair.training
    pair.eval()
    out, se = [], []
    bar = progress_bar(total=(len(betas) - 2) * math.ceil(inputs.n / batch_size), desc="AIS",
                       progress=progress)
    try:
        fixed, compiles = None, None
        for s in range(0, inputs.n, batch_size):
            args, kwargs = inputs.take(slice(s, s + batch_size), device=device)
            if fixed is None:
                with poutine.block(), diverged_said():
                    fixed = fix_globals(pair.guide, program, *args, **kwargs)
                compiles = compile_choice(compile, pair, args, kwargs, chains, start,
                                          (len(betas) - 1) * leapfrog * chains * inputs.n)
            with poutine.block(), flush_denormals(), diverged_said():
                target = Target(pair, program, args, kwargs, chains, fixed)
                log_w = ais(target, betas, start=start, leapfrog=leapfrog, step_size=step_size, bar=bar, mass=mass,
                            **compiles)
            out.append((torch.logsumexp(log_w, 0) - math.log(chains)).cpu())
            se.append(mc_standard_error(log_w).cpu())
    finally:
        bar.close()
        pair.train(was)
    return (torch.cat(out), torch.cat(se)) if with_se else torch.cat(out)
