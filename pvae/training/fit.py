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
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyro
import torch

from pvae.data.datasets import binarize as binarize_x
from pvae.data.draws import DynamicDraws
from pvae.infer.importance import mean_elbo
from pvae.infer.inputs import arrange, own_model
from pvae.infer.objectives import check_objective, configure, objective as make_objective
from pvae.infer.pair import as_pair
from pvae.infer.program import analyse, store_params, untrained_leaves
from pvae.infer.rows import refuse_minibatches
from pvae.infer.sites import kept_state
from pvae.nn.nets import accelerate, flush_denormals
from pvae.util.memory import keep_buffers
from pvae.training.callbacks import checked
from pvae.training.checkpoint import (
    BEST,
    CHECKPOINT,
    _rng_state,
    _set_rng_state,
    load_checkpoint,
    load_state,
    restore_store_params,
    save_checkpoint,
)
from pvae.training.distributed import Context, launched, setup
from pvae.training.faults import FaultPolicy, nonfinite_params
from pvae.training.history import History
from pvae.training.loop import (
    AutoStep,
    _compiled,
    _epochs_since_best,
    _hold_out,
    _step_loss,
    _train_epoch,
    step_signature,
)
from pvae.training.optim import make_optimizer, make_scheduler, step_scheduler
from pvae.training.runs import RunLock, prepare
from pvae.training.settings import FitSettings
from pvae.training.store import run_param_store
from pvae.util.files import dumps, write_text
from pvae.util.progress import bar as progress_bar
from pvae.util.progress import say
from pvae.util.tensors import resolve_device
from pvae.util.validate import out_of_memory


def fit(model, train, objective="elbo", *, guide=None, modules=None, k: int = 1, alpha: float = 0.5,
        epochs: int = 10, batch_size: int = 100, lr: float = 1e-3, seed: int = 0, device=None, test=None,
        labels=None, warmup_epochs: float = 0, run_dir=None, resume=None, progress: bool = True,
        clip_grad: float | None = None, on_nonfinite: str = "stop", distributed: bool | None = None,
        precision: str = "fp32", compile: bool | str = "auto", validate: bool = False,
        data_plate: str | None = None, overwrite: bool = False, callbacks=(), keep_best: bool = True,
        eval_k: int | None = None, flush_denormal: bool = True, optimizer="adam", optimizer_args: dict | None = None,
        scheduler=None, scheduler_args: dict | None = None, validation=None,
        early_stopping: int | None = None) -> History:
    """Train a model/guide pair by SVI and return its `History`.

    Args:
        model: a pvae model, any ``nn.Module`` with ``.model``/``.guide``, or a model function
            (then pass ``guide=`` and ``modules=``, the modules holding their parameters).
        train: tensors, tuples ``(x, a, ...)`` (members reach ``model(x, a, ...)``), dicts of tensors
            (keywords), ``TensorDataset``s, [`pvae.data.datasets.Data`][pvae.data.datasets.Data], Datasets, names or paths; see
            [`pvae.infer.inputs`][pvae.infer.inputs].
        test: evaluated after every epoch (test ELBO); the same kinds as ``train``, or None.
        labels: labels of ``train`` for conditional pairs (which otherwise take them from
            ``(x, y)`` data or a [`pvae.data.datasets.Data`][pvae.data.datasets.Data]): integers or one-hot rows.
        objective: a name from [`pvae.infer.objectives.OBJECTIVES`][pvae.infer.objectives.OBJECTIVES], a spec such as ``"iwae:k=50"``
            or ``"renyi:k=5,alpha=0.5"``, or a Pyro ELBO instance.
        k: particles (samples of z) per datapoint.
        alpha: Rényi alpha (objective ``"renyi"``).
        warmup_epochs: epochs of linear KL warm-up (0: none).
        run_dir: where config, history (JSON, CSV) and checkpoints go (None: nowhere). A folder
            that already holds a run is refused unless ``overwrite=True`` or ``resume`` names it;
            a lock keeps a second process out while this one writes (see [`pvae.training.runs`][pvae.training.runs]).
        resume: a run folder or checkpoint to continue from; training goes on to ``epochs``. The
            run's settings (objective, k, batch size, lr, seed, warm-up, clipping) must match.
        overwrite: replace the run already in ``run_dir`` (its outputs are deleted first).
        callbacks: callables ``cb(record, history)`` called after every epoch with that epoch's
            record (a dict: epoch, train_loss, test_elbo, seconds, ...), e.g.
            [`pvae.training.callbacks.TensorBoard`][pvae.training.callbacks.TensorBoard].
        keep_best: with ``test`` and ``run_dir``, also keep the checkpoint of the best test ELBO
            as ``best.pt`` (``pvae.load(run_dir / "best.pt")``).
        eval_k: with ``test`` and ``run_dir``, evaluate the trained model with ``eval_k``
            importance samples and write the run's report (results.json, summary.md, figures),
            as ``pvae train`` does (None: no report).
        clip_grad: clip the gradients' global norm to this value (None: no clipping).
        optimizer: ``"adam"`` (the default), any ``torch.optim`` class by name (``"adamw"``,
            ``"sgd"``, ...) or the class, or a Pyro optimizer (``pyro.optim.Adam({"lr": 1e-3})``):
            one optimizer over every parameter; see [`pvae.training.optim`][pvae.training.optim].
        optimizer_args: its keyword arguments (``{"momentum": 0.9}``); ``lr`` is ``lr``'s unless named.
        scheduler: a learning-rate schedule stepped after every epoch: ``"cosine"``, ``"step"``,
            ``"exponential"``, ``"plateau"`` (on the validation, else test, ELBO), the name of any
            ``torch.optim.lr_scheduler`` class, or the class; ``scheduler_args`` its arguments.
        validation: held-out data for model selection: a fraction of ``train`` (``0.1``: a seeded
            tenth of the rows, left out of training) or data of their own. Their ELBO is
            ``val_elbo`` in the history; ``best.pt``, ``"plateau"`` and early stopping follow it.
        early_stopping: stop when the validation (else test) ELBO has not improved for this many
            epochs; the best checkpoint stays ``best.pt``.
        on_nonfinite: a NaN/inf loss or gradient ``"stop"``s training with a ``FloatingPointError``
            naming the epoch and step (the last good checkpoint stays), or is ``"skip"``ped: the
            batch is dropped and the learning rate halved (10 in a row stop training).
        distributed: data-parallel training over the processes of a ``torchrun`` launch (None:
            whenever torchrun started more than one); ``batch_size`` is then the global batch.
            See [`pvae.training.distributed`][pvae.training.distributed].
        precision: ``"fp32"``, or ``"bf16"`` / ``"fp16"`` for the nets' arithmetic (log-densities stay
            float32); see [`pvae.nn.nets.accelerate`][pvae.nn.nets.accelerate].
        compile: ``"step"``: trace the whole step (loss, gradients and the Adam update) once per
            input shape and compile it (see [`pvae.infer.compiled`][pvae.infer.compiled]; what cannot be traced
            stays eager, said in one line); ``"auto"`` (the default): ``"step"`` once the first
            steps show the run long enough for compiling to pay (`AutoStep`); ``False``: eager;
            ``True``: ``torch.compile`` pvae's nets in place (an older, smaller mean).
        flush_denormal: on the CPU, flush denormal floats to zero while training (restored
            afterwards): tiny values late in training otherwise slow every op (IWAE k=50).
        validate: Pyro's distribution validation (off by default: it costs time).
        data_plate: the name of the plate over datapoints (None: found by tracing the program
            once; see [`pvae.infer.program`][pvae.infer.program]).

    Parameters the program registers in Pyro's param store (``pyro.param``, ``pyro.module``) are
    trained and checkpointed with the module's, as Pyro's SVI trains them.
    """
    s = FitSettings(objective=objective, k=k, alpha=alpha, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                    warmup_epochs=warmup_epochs, clip_grad=clip_grad, on_nonfinite=on_nonfinite, precision=precision,
                    compile=compile, flush_denormal=flush_denormal, validate=validate, data_plate=data_plate,
                    keep_best=keep_best, eval_k=eval_k, progress=progress, optimizer=optimizer,
                    optimizer_args=optimizer_args, scheduler=scheduler, scheduler_args=scheduler_args,
                    validation=validation, early_stopping=early_stopping)
    try:
        with run_param_store():  # stale pyro.module entries of other modules never meet this run
            return _fit(model, train, s, guide=guide, modules=modules, device=device, test=test, labels=labels,
                        run_dir=run_dir, resume=resume, distributed=distributed, overwrite=overwrite,
                        callbacks=checked(callbacks))
    except (RuntimeError, MemoryError) as e:
        what = out_of_memory(e)
        if what is None:
            raise
        raise MemoryError(f"{what}; lower k ({k}) or batch_size ({batch_size}), or use a smaller model") from None


@dataclass
class Run:
    """What `fit` sets up before the first epoch and the epochs work on: the pair and its objective,
    where and on what it trains, the optimizer, and the record so far."""

    pair: object
    elbo: object
    ctx: Context
    device: torch.device
    program: object
    extra: dict  # parameters in Pyro's param store (name -> tensor), trained with the module's
    params: list
    optimizer: torch.optim.Optimizer
    inputs: object
    test_inputs: object
    val_inputs: object
    schedule: object
    binarize: str
    first_args: tuple
    first_kwargs: dict
    shuffle: torch.Generator
    fit_config: dict
    history: History = field(default_factory=History)
    start_epoch: int = 0
    run_dir: Path | None = None
    resume: object = None
    callbacks: tuple = ()


def _fit(model, train, s: FitSettings, *, guide, modules, device, test, labels, run_dir, resume, distributed, overwrite,
         callbacks) -> History:
    pair = as_pair(model, guide, modules)
    accelerate(pair, s.precision, s.compile is True)
    device = resolve_device(device)
    ctx = Context()
    if distributed or (distributed is None and launched()):
        ctx, device = setup(device)
        if s.batch_size < ctx.world:
            raise ValueError(f"batch_size ({s.batch_size}) is the global batch: it must be >= the number of "
                             f"processes ({ctx.world})")
    elbo = make_objective(s.objective, k=s.k, alpha=s.alpha) if isinstance(s.objective, str) else s.objective
    inputs, binarize = arrange(pair, train, labels, "training data")
    inputs, val_inputs = _hold_out(pair, inputs, binarize, s)
    inputs = inputs.to(device)
    val_inputs = val_inputs.to(device) if val_inputs is not None else None
    if s.early_stopping is not None and val_inputs is None and test is None:
        raise ValueError("early_stopping watches the validation or test ELBO: pass validation= (a fraction such as "
                         "0.1, or data) or test=")
    if ctx.active and (s.early_stopping is not None or s.scheduler is not None):
        raise ValueError("early stopping and learning-rate schedules run in one process: leave them out under torchrun")
    test_inputs = None
    if test is not None:
        test_inputs = arrange(pair, test, None, "test data", evaluation=True)[0].to(device)

    pyro.set_rng_seed(s.seed + ctx.rank)  # particles: one stream per rank
    shuffle = torch.Generator().manual_seed(s.seed)  # data order: the same on every rank
    pair.to(device)
    first = inputs.x[:s.batch_size]  # the first batch as training sees it (one fixed binarization)
    first_args, first_kwargs = inputs.take(slice(0, s.batch_size), x=binarize_x(first, "static")
                                           if binarize == "dynamic" else first)
    with pyro.validation_enabled(s.validate), kept_state(pair):  # the user's buffers and RNG as they were
        program = analyse(pair.model, pair.guide, first_args, first_kwargs, data_plate=s.data_plate, module=pair,
                          trusted=own_model(pair))
        extra = store_params(pair, first_args, first_kwargs)
        params = [p for p in pair.parameters() if p.requires_grad] + list(extra.values())
        if not params:
            raise ValueError("the model has no trainable parameters: pass modules=... holding the nets "
                             "that the model and guide use (or register them with pyro.module / pyro.param)")
        missed = untrained_leaves(pair, params, first_args, first_kwargs)
    if program.per_datapoint:  # rows tied to batch positions: one batch, in order, or refused
        refuse_minibatches(program, s.batch_size if not ctx.active else s.batch_size // ctx.world, inputs.n)
        if test_inputs is not None or val_inputs is not None:
            raise ValueError(f"the program keeps one parameter row per training datapoint "
                             f"({', '.join(program.per_datapoint)}), so held-out data have no rows of their own: "
                             "leave out test= and validation=, and evaluate on the training data in their order")
    if missed:
        raise ValueError(f"the loss depends on {len(missed)} tensor(s) that would not be trained ({missed[0]}, ...): "
                         "pass the modules holding them as modules=..., or register them with pyro.module / pyro.param")
    fit_config = s.config(k=elbo.num_particles, device=device, n_train=inputs.n,
                          n_test=None if test_inputs is None else test_inputs.n, processes=ctx.world,
                          data_plate=program.data_plate, vectorized=program.vectorize)
    optimizer = make_optimizer(s.optimizer, s.optimizer_args, params, s.lr)
    run = Run(pair=pair, elbo=elbo, ctx=ctx, device=device, program=program, extra=extra, params=params,
              optimizer=optimizer, inputs=inputs, test_inputs=test_inputs, val_inputs=val_inputs,
              schedule=make_scheduler(s.scheduler, s.scheduler_args, optimizer, s.epochs), binarize=binarize,
              first_args=first_args, first_kwargs=first_kwargs, shuffle=shuffle, fit_config=fit_config,
              resume=resume, callbacks=callbacks)
    if resume is not None:
        _resume(run, s, resume)
    if run_dir is not None and ctx.main:
        run.run_dir = prepare(run_dir, overwrite=overwrite, resume=resume)
    elif run_dir is not None:
        run.run_dir = Path(run_dir)
    lock = RunLock(run.run_dir) if run.run_dir is not None and ctx.main else contextlib.nullcontext()
    if device.type == "cpu":
        keep_buffers()  # large buffers reused, not faulted in afresh each step (pvae.util.memory)
    denormals = flush_denormals() if s.flush_denormal and device.type == "cpu" else contextlib.nullcontext()
    with lock, denormals:
        _fit_epochs(run, s)
    pair.eval()
    history = run.history
    history.model, history.run_dir = pair, run.run_dir
    history.program, history.notes = program, inputs.notes + program.eval_notes()
    pair._pvae_program = program  # the evaluator reuses what this analysis found
    if s.eval_k is not None and run.run_dir is not None and test is not None and ctx.main:
        from pvae.analysis.report import report

        with lock:
            report(pair, test, run.run_dir, s.eval_k, history=history, progress=s.progress, seed=s.seed)
    return history


def _resume(run: Run, s: FitSettings, resume) -> None:
    """Continue the run in ``resume``: its weights, optimizer state, history and random state."""
    if str(resume).strip() == "":
        raise ValueError("resume must name a run folder or checkpoint, got an empty string")
    state = load_checkpoint(resume, map_location=run.device)
    FitSettings.check_resume(state["fit_config"], run.fit_config, resume)
    load_state(run.pair, state, resume)
    restore_store_params(run.extra, state.get("pyro_params") or {})
    if state["optimizer_state"] is not None:
        run.optimizer.load_state_dict(state["optimizer_state"])
    if run.schedule is not None and state.get("scheduler_state"):
        run.schedule.load_state_dict(state["scheduler_state"])
    run.history.extend(state["history"])
    run.start_epoch = state["epoch"]
    if s.epochs <= run.start_epoch:
        raise ValueError(f"resume: the run in {resume} has already trained {run.start_epoch} epochs; pass epochs > "
                         f"{run.start_epoch} to continue it")
    if state["rng"]:
        _set_rng_state(state["rng"], run.shuffle)
        if run.ctx.active:
            torch.manual_seed(s.seed + run.ctx.rank + 7919 * run.start_epoch)


def _fit_epochs(run: Run, s: FitSettings) -> None:
    """The epochs of `fit`, with the run folder locked."""
    pair, elbo, ctx, device, program, extra = run.pair, run.elbo, run.ctx, run.device, run.program, run.extra
    inputs, test_inputs, history, run_dir, optimizer = run.inputs, run.test_inputs, run.history, run.run_dir, run.optimizer
    n, batch_size, epochs, warmup_epochs, shuffle = inputs.n, s.batch_size, s.epochs, s.warmup_epochs, run.shuffle
    progress = s.progress and ctx.main
    if run_dir is not None and ctx.main:
        write_text(run_dir / "config.json", dumps({"model_class": type(pair).__name__,
                                                   "model": getattr(pair, "config", None), "fit": run.fit_config}))
    steps = math.ceil(n / batch_size)
    if ctx.active and 0 < n % batch_size < ctx.world:
        steps -= 1  # a last batch smaller than the number of processes is dropped
    faults = FaultPolicy(s.on_nonfinite, ctx, deferred=device.type != "cpu" and s.on_nonfinite == "stop"
                         and not ctx.active)
    if run_dir is not None:
        faults.saved = (Path(run.resume) if run.resume is not None and run_dir != Path(run.resume) else run_dir
                        ) / CHECKPOINT, run.start_epoch
    watched = "val_elbo" if run.val_inputs is not None else "test_elbo"  # what best.pt, plateau and stopping follow
    best = max((r[watched] for r in history if r.get(watched) is not None), default=-math.inf)
    since_best = _epochs_since_best(history, watched)
    point_mass = getattr(pair, "point_mass", False)
    with pyro.validation_enabled(s.validate):
        configure(elbo, program)
        with kept_state(pair):
            check_objective(elbo, pair, program, run.first_args, run.first_kwargs)
        if ctx.active and extra:
            raise ValueError(f"data-parallel training keeps the module's parameters in sync, and this program also "
                             f"has {len(extra)} in Pyro's param store ({next(iter(extra))!r}, ...): hold them in the "
                             "module (nn.Parameter) to train on several processes")
        if ctx.active and not hasattr(elbo, "differentiable_loss"):
            raise ValueError(f"{type(elbo).__name__} has no differentiable_loss, which data-parallel training needs")
        step_loss = _step_loss(pair, elbo, ctx, device)
        draws = DynamicDraws(device) if run.binarize == "dynamic" else None
        signature = step_signature(pair, elbo, run.first_args, run.first_kwargs, device)
        if s.compile == "step":
            step_loss = _compiled(pair, elbo, run.params, step_loss, ctx, warmup_epochs, optimizer, s.clip_grad,
                                  signature, draws)
        elif s.compile == "auto" and device.type in ("cpu", "cuda"):
            eager, total = step_loss, (epochs - run.start_epoch) * steps
            step_loss = AutoStep(eager, lambda: _compiled(pair, elbo, run.params, eager, ctx, warmup_epochs, optimizer,
                                                          s.clip_grad, signature, draws), total, device,
                                 signature=signature)
        for epoch in range(run.start_epoch, epochs):
            t0 = time.perf_counter()
            perm = (torch.arange(n, device=device) if run.program.per_datapoint  # row i stays datapoint i
                    else torch.randperm(n, generator=shuffle).to(device))
            bar = progress_bar(range(steps), desc=f"epoch {epoch + 1}/{epochs}", progress=progress)
            total, seen, kl_scale = _train_epoch(
                pair, step_loss, optimizer, run.params, inputs, perm, batch_size, bar, ctx, draws,
                s.clip_grad, faults, epoch, kl_scale=lambda global_step: min(1.0, global_step / (warmup_epochs * steps))
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
            if run.val_inputs is not None:
                pair.eval()
                record["val_elbo"] = mean_elbo(pair, run.val_inputs, program)
            step_scheduler(run.schedule, record.get(watched))
            record["lr"] = optimizer.param_groups[0]["lr"]
            improved = record.get(watched) is not None and record[watched] > best
            since_best = 0 if improved else since_best + 1
            stop = s.early_stopping is not None and since_best >= s.early_stopping and epoch + 1 < epochs
            if stop:
                record["stopped_early"] = True
            history.append(record)
            if progress:
                what = "test log p(x|z)" if point_mass else "test ELBO"
                say(f"epoch {epoch + 1}/{epochs}  train loss {record['train_loss']:.2f}"
                    + (f"  {what} {record['test_elbo']:.2f}" if "test_elbo" in record else "")
                    + (f"  validation ELBO {record['val_elbo']:.2f}" if "val_elbo" in record else "")
                    + f"  {record['seconds']:.1f}s")
            if run_dir is not None and ctx.main:
                is_best = s.keep_best and improved
                if is_best:
                    record["best"] = True
                save = dict(optimizer=optimizer, epoch=epoch + 1, history=history, rng=_rng_state(shuffle),
                            fit_config=run.fit_config, pyro_params=extra, scheduler=run.schedule)
                save_checkpoint(run_dir / CHECKPOINT, pair, **save)
                faults.saved = (run_dir / CHECKPOINT, epoch + 1)
                if is_best:
                    save_checkpoint(run_dir / BEST, pair, **save)
                history.save(run_dir)
            if improved:
                best = record[watched]
            for callback in run.callbacks:
                callback(record, history)
            if stop:
                if progress:
                    say(f"early stopping: the {watched.replace('_', ' ').replace('val', 'validation').replace('elbo', 'ELBO')} "
                        f"has not improved for {s.early_stopping} epochs (best {best:.2f})")
                break
    if ctx.active:
        torch.distributed.barrier()  # rank 0 has written its checkpoint before anyone returns

