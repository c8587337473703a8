r"""The one training loop: stochastic variational inference for any model/guide pair.

Each step draws a minibatch x_B, evaluates the objective's differentiable loss
(e.g. -ELBO = -E_q[log p(x,z) - log q(z|x)] summed over the batch) with reparameterized
draws, and takes one step of a single ``torch.optim.Adam`` over all the module's parameters
(faster than ``pyro.optim``, which builds one optimizer per parameter). KL warm-up multiplies
the latent sites of model and guide by min(1, step / (warmup_epochs * steps_per_epoch)). A model
with an ``anneal(step)`` method (a temperature schedule) has it called before every step.

The data live on the training device as one tensor; batches are drawn by a seeded on-device
permutation (no DataLoader). After every epoch the test ELBO is measured, and the history and a
checkpoint are written atomically to ``run_dir``; ``resume=`` continues from one.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import time
import warnings
from pathlib import Path

import pyro
import torch
from pyro import poutine

from .checkpoint import BEST, CHECKPOINT, load_checkpoint, load_state, restore_store_params, save_checkpoint, write_text
from .data import binarize as binarize_x
from .faults import FaultPolicy, nonfinite_params
from .handlers import scale_latents
from .inputs import Inputs, arrange, own_model
from .nets import accelerate, flush_denormals
from .objectives import check_objective, configure, objective as make_objective
from .pair import as_pair
from .program import Program, analyse, fix_globals, log_weight_terms, store_params, untrained_leaves
from .distributed import Context, launched, setup, sum_all, wrap
from .progress import bar as progress_bar, say
from .runs import RunLock, dumps, prepare
from .validate import check_number, check_positive_int, out_of_memory


class History(list):
    """Per-epoch records (dicts: ``epoch``, ``train_loss``, ``test_elbo``, ``seconds``, ...).

    ``history.model`` is the trained module, ``history.run_dir`` where its files went,
    ``history.program`` what tracing the program found ([`pvae.program.Program`][pvae.program.Program]) and
    ``history.notes`` what a user should hear of it (labels not passed, global latents held at
    their guide mean, training scales left out of evaluation, sequential particles).
    """

    model = None
    run_dir = None
    program = None
    notes: list = []

    def column(self, key):
        return [r.get(key) for r in self]

    def to_csv(self) -> str:
        keys = list(dict.fromkeys(k for r in self for k in r))
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=keys)
        w.writeheader()
        w.writerows(self)
        return buf.getvalue()

    def save(self, run_dir) -> None:
        run_dir = Path(run_dir)
        write_text(run_dir / "history.json", json.dumps(list(self), indent=1))
        write_text(run_dir / "history.csv", self.to_csv())


def resolve_device(device) -> torch.device:
    try:
        device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    except (RuntimeError, TypeError):
        raise ValueError(f"device {device!r} is not a torch device; use 'cpu', 'cuda' or 'cuda:N'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but torch sees no CUDA device; use device='cpu'")
    return device


@torch.no_grad()
def mean_elbo(pair, data, program: Program | None = None, batch_size: int = 1000) -> float:
    """The ELBO (one draw, no beta, warm-up or other training scale) averaged over the datapoints
    of ``data`` (an [`Inputs`][pvae.inputs.Inputs], or anything [`pvae.fit`][pvae.fit] takes); global
    latents are held at their guide mean."""
    inputs = data if isinstance(data, Inputs) else arrange(pair, data, what="evaluation data", evaluation=True)[0]
    if program is None:
        from .evaluate import program_of

        program = program_of(pair, inputs, batch_size=batch_size)
    total, fixed = 0.0, None
    for s in range(0, inputs.n, batch_size):
        args, kwargs = inputs.take(slice(s, s + batch_size))
        with poutine.block():
            if fixed is None:
                fixed = fix_globals(pair.guide, program, *args, **kwargs)
            t = log_weight_terms(pair.model, pair.guide, *args, num_particles=1, program=program, fixed=fixed, **kwargs)
        total += float(t.log_weights.sum())
    return total / inputs.n


def _rng_state(shuffle: torch.Generator) -> dict:
    state = {"torch": torch.get_rng_state(), "shuffle": shuffle.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict, shuffle: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    shuffle.set_state(state["shuffle"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _check_args(objective, epochs, batch_size, lr, seed, warmup_epochs, clip_grad, on_nonfinite, eval_k):
    if not isinstance(objective, str) and not (hasattr(objective, "loss") and hasattr(objective, "num_particles")):
        raise TypeError(f"objective must be a name such as 'elbo' or 'iwae:k=50', or a Pyro ELBO instance; got "
                        f"{type(objective).__name__} {objective!r}")
    check_positive_int("epochs", epochs, minimum=0)
    check_positive_int("batch_size", batch_size)
    check_positive_int("seed", seed, minimum=0)
    check_number("lr", lr, low=0, open_low=True)
    check_number("warmup_epochs", warmup_epochs, low=0)
    check_number("clip_grad", clip_grad, low=0, open_low=True, allow_none=True)
    if on_nonfinite not in ("stop", "skip"):
        raise ValueError(f"on_nonfinite must be 'stop' or 'skip', got {on_nonfinite!r}")
    if eval_k is not None:
        check_positive_int("eval_k", eval_k)


#: ``compile="auto"`` compiles the step when the rest of the run, at the speed of its first eager
#: steps, would take at least this many seconds: compiling takes 5-25 s per batch shape on 2 CPU
#: cores (25 s with inductor's caches cold), and the compiled step takes 0.45-0.6x the eager
#: step's time for the IWAE paper's net (benchmarks/README.md), so it pays from about a minute on
COMPILE_PAYS_FROM = 60.0


class AutoStep:
    """``compile="auto"``: the first ``probe`` steps run eager and are timed; if the remaining
    ``steps`` at that speed would take `COMPILE_PAYS_FROM` seconds or more, the compiled step
    (``build()``) takes over. ``grad_norm`` and ``updated`` are the active step's."""

    def __init__(self, eager, build, steps: int, device, probe: int = 5):
        self.eager, self.build, self.steps, self.device, self.probe = eager, build, steps, device, probe
        self.active, self.seconds, self.calls = eager, 0.0, 0

    grad_norm = property(lambda self: getattr(self.active, "grad_norm", None))
    updated = property(lambda self: getattr(self.active, "updated", False))

    def __call__(self, *args, **kwargs):
        if self.calls >= self.probe:
            return self.active(*args, **kwargs)
        self.calls += 1
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        loss = self.eager(*args, **kwargs)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        if self.calls > 1:  # the first step pays one-time costs
            self.seconds += time.perf_counter() - t0
        if self.calls == self.probe and self.seconds / (self.probe - 1) * (self.steps - self.probe) >= COMPILE_PAYS_FROM:
            self.active = self.build()
        return loss

#: the training settings a resumed run must share with the run it continues
RESUMED = ("objective", "k", "alpha", "batch_size", "lr", "seed", "warmup_epochs", "clip_grad")


def _check_resume(saved: dict, given: dict, path) -> None:
    """Resuming continues a run as it was configured: a different setting is an error naming it."""
    for key in RESUMED:
        if key in saved and saved[key] != given[key] and not (key == "alpha" and "renyi" not in str(given["objective"])):
            raise ValueError(f"resume: {key}={given[key]!r} differs from the run's {key}={saved[key]!r} in {path}; "
                             f"pass {key}={saved[key]!r} to continue it, or start a new run to change it")


def adam(params, lr: float) -> torch.optim.Adam:
    """One ``torch.optim.Adam`` over all parameters, with torch's fused kernel where it takes them
    (one kernel for every tensor: 0.2 ms a step for the IWAE paper's net on CPU, against 1.0 ms)."""
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, ValueError, TypeError):  # a device or dtype the fused kernel does not take
        return torch.optim.Adam(params, lr=lr)


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


def _compiled(pair, elbo, params, step_loss, ctx, warmup_epochs, optimizer, clip_grad):
    """The compiled step, Adam update included, where nothing blocks it (one line says what does)."""
    from .compiled import CompiledStep

    blocked = ("multi-process training" if ctx.active else "KL warm-up changes a scale every step" if warmup_epochs
               else "the model anneals a value every step" if hasattr(pair, "anneal") else None)
    def speak(line):
        warnings.warn(line, stacklevel=3)

    if blocked:
        speak(f"compile='step': the step stays eager: {blocked}")
        return step_loss
    return CompiledStep(pair, elbo, params, step_loss, say=speak, optimizer=optimizer, clip_grad=clip_grad)


def _train_epoch(pair, step_loss, optimizer, params, inputs, perm, batch_size, bar, ctx, binarize, clip_grad, faults,
                 epoch, kl_scale, steps):
    """One pass over the data; returns (summed loss, datapoints seen, the last KL scale), all ranks summed."""
    pair.train()
    device = inputs.x.device
    total, seen, scale = torch.zeros((), device=device), 0, 1.0
    anneal = getattr(pair, "anneal", None)  # a model's own schedule (e.g. a Gumbel-softmax temperature)
    faults.start_epoch(device)
    for step in bar:
        idx = perm[step * batch_size:(step + 1) * batch_size]
        idx = idx[ctx.rank::ctx.world] if ctx.active else idx
        xb = inputs.x.index_select(0, idx)
        if binarize == "dynamic":
            xb = (torch.rand_like(xb) < xb).to(xb.dtype)  # Bernoulli(xb); twice as fast as torch.bernoulli on CPU
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


def fit(model, train, objective="elbo", *, guide=None, modules=None, k: int = 1, alpha: float = 0.5,
        epochs: int = 10, batch_size: int = 100, lr: float = 1e-3, seed: int = 0, device=None, test=None,
        labels=None, warmup_epochs: float = 0, run_dir=None, resume=None, progress: bool = True,
        clip_grad: float | None = None, on_nonfinite: str = "stop", distributed: bool | None = None,
        precision: str = "fp32", compile: bool | str = "auto", validate: bool = False,
        data_plate: str | None = None, overwrite: bool = False, callbacks=(), keep_best: bool = True,
        eval_k: int | None = None, flush_denormal: bool = True) -> History:
    """Train a model/guide pair by SVI and return its `History`.

    Args:
        model: a pvae model, any ``nn.Module`` with ``.model``/``.guide``, or a model function
            (then pass ``guide=`` and ``modules=``, the modules holding their parameters).
        train: tensors, tuples ``(x, a, ...)`` (members reach ``model(x, a, ...)``), dicts of tensors
            (keywords), ``TensorDataset``s, [`pvae.data.Data`][pvae.data.Data], Datasets, names or paths; see
            [`pvae.inputs`][pvae.inputs].
        test: evaluated after every epoch (test ELBO); the same kinds as ``train``, or None.
        labels: labels of ``train`` for conditional pairs (which otherwise take them from
            ``(x, y)`` data or a [`pvae.data.Data`][pvae.data.Data]): integers or one-hot rows.
        objective: a name from [`pvae.objectives.OBJECTIVES`][pvae.objectives.OBJECTIVES], a spec such as ``"iwae:k=50"``
            or ``"renyi:k=5,alpha=0.5"``, or a Pyro ELBO instance.
        k: particles (samples of z) per datapoint.
        alpha: Rényi alpha (objective ``"renyi"``).
        warmup_epochs: epochs of linear KL warm-up (0: none).
        run_dir: where config, history (JSON, CSV) and checkpoints go (None: nowhere). A folder
            that already holds a run is refused unless ``overwrite=True`` or ``resume`` names it;
            a lock keeps a second process out while this one writes (see [`pvae.runs`][pvae.runs]).
        resume: a run folder or checkpoint to continue from; training goes on to ``epochs``. The
            run's settings (objective, k, batch size, lr, seed, warm-up, clipping) must match.
        overwrite: replace the run already in ``run_dir`` (its outputs are deleted first).
        callbacks: callables ``cb(record, history)`` called after every epoch with that epoch's
            record (a dict: epoch, train_loss, test_elbo, seconds, ...), e.g.
            [`pvae.callbacks.TensorBoard`][pvae.callbacks.TensorBoard].
        keep_best: with ``test`` and ``run_dir``, also keep the checkpoint of the best test ELBO
            as ``best.pt`` (``pvae.load(run_dir / "best.pt")``).
        eval_k: with ``test`` and ``run_dir``, evaluate the trained model with ``eval_k``
            importance samples and write the run's report (results.json, summary.md, figures),
            as ``pvae train`` does (None: no report).
        clip_grad: clip the gradients' global norm to this value (None: no clipping).
        on_nonfinite: a NaN/inf loss or gradient ``"stop"``s training with a ``FloatingPointError``
            naming the epoch and step (the last good checkpoint stays), or is ``"skip"``ped: the
            batch is dropped and the learning rate halved (10 in a row stop training).
        distributed: data-parallel training over the processes of a ``torchrun`` launch (None:
            whenever torchrun started more than one); ``batch_size`` is then the global batch.
            See [`pvae.distributed`][pvae.distributed].
        precision: ``"fp32"``, or ``"bf16"`` / ``"fp16"`` for the nets' arithmetic (log-densities stay
            float32); see [`pvae.nets.accelerate`][pvae.nets.accelerate].
        compile: ``"step"``: trace the whole step (loss, gradients and the Adam update) once per
            input shape and compile it (see [`pvae.compiled`][pvae.compiled]; what cannot be traced
            stays eager, said in one line); ``"auto"`` (the default): ``"step"`` once the first
            steps show the run long enough for compiling to pay (`AutoStep`); ``False``: eager;
            ``True``: ``torch.compile`` pvae's nets in place (an older, smaller mean).
        flush_denormal: on the CPU, flush denormal floats to zero while training (restored
            afterwards): tiny values late in training otherwise slow every op (IWAE k=50).
        validate: Pyro's distribution validation (off by default: it costs time).
        data_plate: the name of the plate over datapoints (None: found by tracing the program
            once; see [`pvae.program`][pvae.program]).

    Parameters the program registers in Pyro's param store (``pyro.param``, ``pyro.module``) are
    trained and checkpointed with the module's, as Pyro's SVI trains them.
    """
    settings = dict(locals())
    try:
        return _fit(**settings)
    except (RuntimeError, MemoryError) as e:
        what = out_of_memory(e)
        if what is None:
            raise
        raise MemoryError(f"{what}; lower k ({k}) or batch_size ({batch_size}), or use a smaller model") from None


def _fit(model, train, objective, *, guide, modules, k, alpha, epochs, batch_size, lr, seed, device, test, labels,
         warmup_epochs, run_dir, resume, progress, clip_grad, on_nonfinite, distributed, precision, compile, validate,
         data_plate, overwrite, callbacks, keep_best, eval_k, flush_denormal) -> History:
    _check_args(objective, epochs, batch_size, lr, seed, warmup_epochs, clip_grad, on_nonfinite, eval_k)
    if compile not in (False, True, "step", "auto"):
        raise ValueError(f"compile must be 'auto', 'step' (the whole step), False or True (the nets), got {compile!r}")
    pair = as_pair(model, guide, modules)
    accelerate(pair, precision, compile is True)
    device = resolve_device(device)
    ctx = Context()
    if distributed or (distributed is None and launched()):
        ctx, device = setup(device)
        if batch_size < ctx.world:
            raise ValueError(f"batch_size ({batch_size}) is the global batch: it must be >= the number of "
                             f"processes ({ctx.world})")
    elbo = make_objective(objective, k=k, alpha=alpha) if isinstance(objective, str) else objective
    inputs, binarize = arrange(pair, train, labels, "training data")
    n = inputs.n
    inputs = inputs.to(device)
    test_inputs = None
    if test is not None:
        test_inputs = arrange(pair, test, None, "test data", evaluation=True)[0].to(device)

    pyro.set_rng_seed(seed + ctx.rank)  # particles: one stream per rank
    shuffle = torch.Generator().manual_seed(seed)  # data order: the same on every rank
    pair.to(device)
    first = inputs.x[:batch_size]  # the first batch as training sees it (one fixed binarization)
    first_args, first_kwargs = inputs.take(slice(0, batch_size), x=binarize_x(first, "static")
                                           if binarize == "dynamic" else first)
    with pyro.validation_enabled(validate):
        program = analyse(pair.model, pair.guide, first_args, first_kwargs, data_plate=data_plate, module=pair,
                          trusted=own_model(pair))
        extra = store_params(pair, first_args, first_kwargs)
        params = [p for p in pair.parameters() if p.requires_grad] + list(extra.values())
        if not params:
            raise ValueError("the model has no trainable parameters: pass modules=... holding the nets "
                             "that the model and guide use (or register them with pyro.module / pyro.param)")
        missed = untrained_leaves(pair, params, first_args, first_kwargs)
    if missed:
        raise ValueError(f"the loss depends on {len(missed)} tensor(s) that would not be trained ({missed[0]}, ...): "
                         "pass the modules holding them as modules=..., or register them with pyro.module / pyro.param")
    optimizer = adam(params, lr)
    fit_config = {"objective": objective if isinstance(objective, str) else type(objective).__name__,
                  "k": elbo.num_particles, "alpha": alpha, "epochs": epochs, "batch_size": batch_size, "lr": lr,
                  "seed": seed, "device": str(device), "warmup_epochs": warmup_epochs, "n_train": n,
                  "n_test": None if test_inputs is None else test_inputs.n, "clip_grad": clip_grad,
                  "on_nonfinite": on_nonfinite, "processes": ctx.world, "precision": precision, "compile": compile,
                  "data_plate": program.data_plate, "vectorized_particles": program.vectorize}
    history, start_epoch = History(), 0
    if resume is not None:
        if str(resume).strip() == "":
            raise ValueError("resume must name a run folder or checkpoint, got an empty string")
        state = load_checkpoint(resume, map_location=device)
        _check_resume(state["fit_config"], fit_config, resume)
        load_state(pair, state, resume)
        restore_store_params(extra, state.get("pyro_params") or {})
        if state["optimizer_state"] is not None:
            optimizer.load_state_dict(state["optimizer_state"])
        history.extend(state["history"])
        start_epoch = state["epoch"]
        if epochs <= start_epoch:
            raise ValueError(f"resume: the run in {resume} has already trained {start_epoch} epochs; pass epochs > "
                             f"{start_epoch} to continue it")
        if state["rng"]:
            _set_rng_state(state["rng"], shuffle)
            if ctx.active:
                torch.manual_seed(seed + ctx.rank + 7919 * start_epoch)
    if run_dir is not None and ctx.main:
        run_dir = prepare(run_dir, overwrite=overwrite, resume=resume)
    elif run_dir is not None:
        run_dir = Path(run_dir)
    lock = RunLock(run_dir) if run_dir is not None and ctx.main else contextlib.nullcontext()
    denormals = flush_denormals() if flush_denormal and device.type == "cpu" else contextlib.nullcontext()
    with lock, denormals:
        _fit_epochs(locals())
    pair.eval()
    history.model, history.run_dir = pair, run_dir
    history.program, history.notes = program, inputs.notes + program.eval_notes()
    pair._pvae_program = program  # the evaluator reuses what this analysis found
    if eval_k is not None and run_dir is not None and test is not None and ctx.main:
        from .report import report

        with lock:
            report(pair, test, run_dir, eval_k, history=history, progress=progress, seed=seed)
    return history


def _fit_epochs(v: dict) -> None:
    """The epochs of `fit` (its locals in ``v``), with the run folder locked."""
    pair, elbo, ctx, device, program, extra = v["pair"], v["elbo"], v["ctx"], v["device"], v["program"], v["extra"]
    inputs, test_inputs, history, run_dir, optimizer = v["inputs"], v["test_inputs"], v["history"], v["run_dir"], v["optimizer"]
    n, batch_size, epochs, warmup_epochs, shuffle = v["n"], v["batch_size"], v["epochs"], v["warmup_epochs"], v["shuffle"]
    progress = v["progress"] and ctx.main
    if run_dir is not None and ctx.main:
        write_text(run_dir / "config.json", dumps({"model_class": type(pair).__name__,
                                                   "model": getattr(pair, "config", None), "fit": v["fit_config"]}))
    steps = math.ceil(n / batch_size)
    if ctx.active and 0 < n % batch_size < ctx.world:
        steps -= 1  # a last batch smaller than the number of processes is dropped
    faults = FaultPolicy(v["on_nonfinite"], ctx, deferred=device.type != "cpu" and v["on_nonfinite"] == "stop"
                         and not ctx.active)
    if run_dir is not None:
        faults.saved = (Path(v["resume"]) if v["resume"] is not None and run_dir != Path(v["resume"]) else run_dir
                        ) / CHECKPOINT, v["start_epoch"]
    best = max((r["test_elbo"] for r in history if r.get("test_elbo") is not None), default=-math.inf)
    point_mass = getattr(pair, "point_mass", False)
    with pyro.validation_enabled(v["validate"]):
        configure(elbo, program)
        check_objective(elbo, pair, program, v["first_args"], v["first_kwargs"])
        if ctx.active and extra:
            raise ValueError(f"data-parallel training keeps the module's parameters in sync, and this program also "
                             f"has {len(extra)} in Pyro's param store ({next(iter(extra))!r}, ...): hold them in the "
                             "module (nn.Parameter) to train on several processes")
        if ctx.active and not hasattr(elbo, "differentiable_loss"):
            raise ValueError(f"{type(elbo).__name__} has no differentiable_loss, which data-parallel training needs")
        step_loss = _step_loss(pair, elbo, ctx, device)
        if v["compile"] == "step":
            step_loss = _compiled(pair, elbo, v["params"], step_loss, ctx, warmup_epochs, optimizer, v["clip_grad"])
        elif v["compile"] == "auto" and device.type in ("cpu", "cuda"):
            eager, total = step_loss, (epochs - v["start_epoch"]) * steps
            step_loss = AutoStep(eager, lambda: _compiled(pair, elbo, v["params"], eager, ctx, warmup_epochs, optimizer,
                                                          v["clip_grad"]), total, device)
        for epoch in range(v["start_epoch"], epochs):
            t0 = time.perf_counter()
            perm = torch.randperm(n, generator=shuffle).to(device)
            bar = progress_bar(range(steps), desc=f"epoch {epoch + 1}/{epochs}", progress=progress)
            total, seen, kl_scale = _train_epoch(
                pair, step_loss, optimizer, v["params"], inputs, perm, batch_size, bar, ctx, v["binarize"],
                v["clip_grad"], faults, epoch, kl_scale=lambda global_step: min(1.0, global_step / (warmup_epochs * steps))
                if warmup_epochs else 1.0, steps=steps)
            record = {"epoch": epoch + 1, "train_loss": float(total) / max(seen, 1),
                      "seconds": time.perf_counter() - t0, "kl_scale": kl_scale}
            bad = nonfinite_params(pair, extra)
            if bad:  # e.g. a finite gradient times an inf learning rate: never saved as a good checkpoint
                raise FloatingPointError(f"parameters became non-finite during epoch {epoch + 1} ({bad[0]}"
                                         f"{', ...' if len(bad) > 1 else ''}); {faults.kept()}")
            if test_inputs is not None and ctx.main:
                pair.eval()
                record["test_elbo"] = mean_elbo(pair, test_inputs, program)
                if math.isnan(record["test_elbo"]):
                    raise FloatingPointError(f"the test ELBO is NaN after epoch {epoch + 1}; {faults.kept()}")
            history.append(record)
            if progress:
                what = "test log p(x|z)" if point_mass else "test ELBO"
                say(f"epoch {epoch + 1}/{epochs}  train loss {record['train_loss']:.2f}"
                    + (f"  {what} {record['test_elbo']:.2f}" if "test_elbo" in record else "")
                    + f"  {record['seconds']:.1f}s")
            if run_dir is not None and ctx.main:
                is_best = v["keep_best"] and record.get("test_elbo") is not None and record["test_elbo"] > best
                if is_best:
                    best, record["best"] = record["test_elbo"], True
                save = dict(optimizer=optimizer, epoch=epoch + 1, history=history, rng=_rng_state(shuffle),
                            fit_config=v["fit_config"], pyro_params=extra)
                save_checkpoint(run_dir / CHECKPOINT, pair, **save)
                faults.saved = (run_dir / CHECKPOINT, epoch + 1)
                if is_best:
                    save_checkpoint(run_dir / BEST, pair, **save)
                history.save(run_dir)
            for callback in v["callbacks"]:
                callback(record, history)
    if ctx.active:
        torch.distributed.barrier()  # rank 0 has written its checkpoint before anyone returns
