"""One epoch of SVI: minibatches drawn on the device, one ``torch.optim.Adam`` step each, through
the eager step or the compiled one (``compile="auto"`` decides from the first steps).

KL warm-up multiplies the latent sites of model and guide by min(1, step / (warmup_epochs *
steps_per_epoch)); a model with an ``anneal(step)`` method has it called before every step.
"""

from __future__ import annotations

import math
import statistics
import time
import warnings

import torch

from pvae.data.datasets import binarize as binarize_x
from pvae.infer.handlers import scale_latents
from pvae.infer.inputs import arrange
from pvae.training.distributed import sum_all, wrap
from pvae.training.settings import FitSettings
from pvae.util.cache import SLOWER, remember, seen_before, slower_here

#: what compiling the step costs, in seconds, for the IWAE paper's net on 2 CPU cores, importing
#: inductor included (benchmarks/README.md): with this graph compiled before on this machine
#: (inductor's on-disk FX graph cache and pvae's product choices warm: 1.5 s + 2.1 s import on AMD
#: EPYC) and cold (a new net 8.2 + 2.0 s; a machine's first compile, its precompiled header built
#: alongside, 9.7 + 1.8 s; 15-16 s on Xeon before the kernels were built together)
COMPILE_SECONDS = {"warm": 4.0, "cold": 12.0}
#: the compiled step's time as a share of the eager step's (measured 0.43 at k=1 and 0.57 at k=50 on
#: CPU, 0.13 on an H200): the share of the remaining eager time that compiling saves is 1 - this
COMPILED_SHARE = 0.6


def compile_pays(eager_step: float, steps_left: int, warm: bool) -> bool:
    """Whether the compiled step, its compilation included, finishes the rest of the run sooner."""
    return steps_left * eager_step * (1 - COMPILED_SHARE) >= COMPILE_SECONDS["warm" if warm else "cold"]


class AutoStep:
    """``compile="auto"``: the first ``probe`` steps run eager and are timed; if the compiled step,
    its compilation included (`compile_pays`: warm where this machine compiled the same step before,
    `pvae.util.cache.seen_before`), would finish the remaining ``steps`` sooner, it takes over
    (``build()``). After its first (compiling) call, ``2 * probe`` steps alternate between the
    compiled and the eager step, each timed: a compiled step that is not faster than the eager one
    on this machine hands back to the eager step, says so in one line, and is not compiled again
    here (`pvae.util.cache`). Alternating, the two are timed under the same conditions: on a shared
    machine whose cores slow down and speed up by 1.5-2x over seconds, eager steps timed before the
    compile against compiled ones timed after it once called a compiled step slower that was 1.7x
    faster, and kept every later run eager. ``grad_norm`` and ``updated`` are those of the step
    that ran last, ``draws_inside`` that of the step that runs next."""

    def __init__(self, eager, build, steps: int, device, probe: int = 5, signature: str | None = None,
                 say=None):
        self.eager, self.build, self.steps, self.device, self.probe = eager, build, steps, device, probe
        self.signature, self.say = signature, say or (lambda line: warnings.warn(line, stacklevel=4))
        self.active = self.last = eager  # the step the next call runs, the step the last call ran
        self.compiled, self.calls = None, 0
        self.eager_times: list = []
        self.compiled_times: list = []

    grad_norm = property(lambda self: getattr(self.last, "grad_norm", None))
    updated = property(lambda self: getattr(self.last, "updated", False))
    draws_inside = property(lambda self: getattr(self.active, "draws_inside", False))

    def follow_state(self) -> None:
        follow = getattr(self.compiled, "follow_state", None)
        if follow is not None:
            follow()

    def _timed(self, step, *args, **kwargs):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        loss = step(*args, **kwargs)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return loss, time.perf_counter() - t0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        step = self.last = self.active
        first_compiled, window_end = self.probe + 1, self.probe + 1 + 2 * self.probe
        if self.calls <= self.probe:  # eager, timed (the first step pays one-time costs: not counted)
            loss, seconds = self._timed(step, *args, **kwargs)
            if self.calls > 1:
                self.eager_times.append(seconds)
            if self.calls == self.probe and not slower_here(self.signature) and compile_pays(
                    sum(self.eager_times) / len(self.eager_times), self.steps - self.probe, seen_before(self.signature)):
                self.compiled = self.active = self.build()
            return loss
        if self.compiled is None or self.calls > window_end:
            return step(*args, **kwargs)
        if self.calls == first_compiled:  # traces and compiles: not timed
            loss = step(*args, **kwargs)
            if not getattr(self.compiled, "graphs", None):  # nothing compiled (the step stays eager, said)
                self.calls = window_end
            self.eager_times.clear()  # from here on, eager and compiled steps alternate
        else:
            loss, seconds = self._timed(step, *args, **kwargs)
            (self.eager_times if step is self.eager else self.compiled_times).append(seconds)
        self.active = self.eager if step is self.compiled and self.calls < window_end else self.compiled
        if self.calls == window_end and self.eager_times and self.compiled_times:
            eager, compiled = statistics.median(self.eager_times), statistics.median(self.compiled_times)
            if compiled >= 0.95 * eager:
                self.say(f"compile='auto': the step stays eager: compiled it took {1000 * compiled:.1f} ms against "
                         f"{1000 * eager:.1f} ms eager on this machine (alternating, {len(self.compiled_times)} each)")
                self.active = self.eager
                if self.signature:
                    remember(self.signature, SLOWER)
        return loss


def step_signature(pair, elbo, args, kwargs, device) -> str:
    """What makes two runs compile the same step: the module's structure, the objective, the batch's
    shapes and dtypes, the device type and torch's version."""
    import hashlib

    shapes = [(tuple(t.shape), str(t.dtype)) for t in list(args) + list(kwargs.values()) if isinstance(t, torch.Tensor)]
    text = f"{type(pair).__qualname__}|{pair!r}|{type(elbo).__name__}|{getattr(elbo, 'num_particles', 1)}|" \
           f"{shapes}|{device.type}|{torch.__version__}"
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _step_loss(pair, elbo, ctx, device):
    """``xb -> loss`` with the gradients filled in: through a (DDP-wrapped) loss module where the
    objective has ``differentiable_loss``, else through its ``loss_and_grads``."""
    if hasattr(elbo, "differentiable_loss"):
        engine = wrap(pair, elbo, ctx, device)

        def step_loss(*args, **kwargs):
            loss = engine(*args, **kwargs)  # times the number of processes: DDP averages gradients
            loss.backward()
            return loss.detach() / ctx.world
        return step_loss
    return lambda *args, **kwargs: torch.as_tensor(elbo.loss_and_grads(pair.model, pair.guide, *args, **kwargs))


def _compiled(pair, elbo, params, step_loss, ctx, warmup_epochs, optimizer, clip_grad, signature=None, draws=None):
    """The compiled step, Adam update included, where nothing blocks it (one line says what does);
    a graph that compiles is remembered by its ``signature`` (`step_signature`): the next run's
    compile here is priced warm."""
    from pvae.infer.compiled import CompiledStep

    blocked = ("multi-process training" if ctx.active else "KL warm-up changes a scale every step" if warmup_epochs
               else "the model anneals a value every step" if hasattr(pair, "anneal") else None)
    def speak(line):
        warnings.warn(line, stacklevel=3)

    if blocked:
        speak(f"compile='step': the step stays eager: {blocked}")
        return step_loss
    return CompiledStep(pair, elbo, params, step_loss, say=speak, optimizer=optimizer, clip_grad=clip_grad,
                        on_compiled=None if signature is None else lambda: remember(signature), draws=draws)


def _train_epoch(pair, step_loss, optimizer, params, inputs, perm, batch_size, bar, ctx, draws, clip_grad, faults,
                 epoch, kl_scale, steps):
    """One pass over the data; returns (summed loss, datapoints seen, the last KL scale), all ranks summed.
    ``draws`` (`pvae.data.draws.DynamicDraws`, for dynamic binarization) draws each batch afresh:
    inside the step's graph where the step does (``draws_inside``), else here."""
    pair.train()
    device = inputs.x.device
    total, seen, scale = torch.zeros((), device=device), 0, 1.0
    anneal = getattr(pair, "anneal", None)  # a model's own schedule (e.g. a Gumbel-softmax temperature)
    follow = getattr(step_loss, "follow_state", None)
    if follow is not None:  # a compiled step re-records where a callback changed a value it holds fixed
        follow()
    faults.start_epoch(device)
    if draws is not None:
        draws.new_epoch()
        per_step = batch_size * inputs.x[0].numel()  # each element of the epoch has its own counter
    for step in bar:
        idx = perm[step * batch_size:(step + 1) * batch_size]
        idx = idx[ctx.rank::ctx.world] if ctx.active else idx
        xb = inputs.x.index_select(0, idx)
        if draws is not None:
            draws.at(step, per_step, xb)
            if not getattr(step_loss, "draws_inside", False):
                xb = draws(xb)
        args, kwargs = inputs.take(idx, x=xb)
        scale = kl_scale(epoch * steps + step + 1)
        if anneal is not None:
            anneal(epoch * steps + step)
        optimizer.zero_grad(set_to_none=True)
        with scale_latents(scale=scale):  # warm-up: latent sites of model and guide alike (no-op at 1)
            loss = step_loss(*args, **kwargs)
        updated = getattr(step_loss, "updated", False)  # the compiled step took the Adam step itself
        grad_norm = getattr(step_loss, "grad_norm", None)  # ... or computed the norm in its graph
        if grad_norm is None:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, clip_grad if clip_grad else float("inf"))
        elif clip_grad and not updated:
            torch.nn.utils.clip_grads_with_norm_(params, clip_grad, grad_norm)
        if not faults.allows_step(torch.isfinite(loss) & torch.isfinite(grad_norm), optimizer, epoch, step):
            if faults.deferred:  # (an updating graph left the parameters as they were on a non-finite step)
                break
            continue
        if not updated:
            optimizer.step()
        total += loss
        seen += xb.shape[0]
        if not bar.disable and (step % 20 == 0 or step == steps - 1):
            bar.set_postfix(loss=f"{float(total) / seen:.2f}")
    total, seen = sum_all(total, ctx), int(sum_all(torch.tensor(seen, device=device), ctx))
    faults.end_epoch(epoch)
    return total, seen, scale


def _epochs_since_best(history, watched: str) -> int:
    """Epochs since the watched ELBO last improved (a resumed run's early stopping goes on counting)."""
    best, since = -math.inf, 0
    for r in history:
        value = r.get(watched)
        if value is not None and value > best:
            best, since = value, 0
        else:
            since += 1
    return since


def _hold_out(pair, inputs, binarize: str, s: FitSettings):
    """``(training inputs, validation inputs or None)``: a seeded fraction of the rows held out, or
    the validation data arranged as the program takes them (binarized once where training is dynamic)."""
    if s.validation is None:
        return inputs, None
    if isinstance(s.validation, float):
        n = inputs.n
        held = max(1, round(s.validation * n))
        if held >= n:
            raise ValueError(f"validation={s.validation} of {n} training datapoints leaves none to train on")
        order = torch.randperm(n, generator=torch.Generator().manual_seed(s.seed + 1))
        val_idx, train_idx = order[:held].sort().values, order[held:].sort().values
        val = inputs.subset(val_idx)
        if binarize == "dynamic":
            val.x = binarize_x(val.x, "static")
        return inputs.subset(train_idx), val
    return inputs, arrange(pair, s.validation, None, "validation data", evaluation=True)[0]
