"""The ``pvae`` command: ``pvae train | eval | sample | apply | compare | demo``, each with ``--help``.

Everything a run makes goes into one run folder: ``config.json``, ``history.json``/``.csv``,
``checkpoint.pt``, figures (PNG), ``results.json`` and a short ``summary.md``.
Bad input prints one line (``pvae: error: ...``) and exits with status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import sys
import time
import warnings
from pathlib import Path

from .data import BINARIZE, EMBEDDED, load_dataset
from .guides import GUIDES
from .likelihoods import LIKELIHOODS
from .nets import ACTIVATIONS
from .objectives import OBJECTIVES
from .report import report, results_table
from .validate import out_of_memory


# -- the work, shared by the commands -----------------------------------------------------------
class Members(dict):
    """Several arrays per datapoint (an .npz with arrays besides x and y), by name, x first: they
    reach a program of your own as keyword arguments (see [`pvae.inputs`][pvae.inputs])."""

    y = None

    def __len__(self):
        return int(next(iter(self.values())).shape[0])

    def eval_x(self):
        return next(iter(self.values()))

    @property
    def x(self):
        return self.eval_x()


def _npz_members(path: str, split: str, n=None):
    """An .npz's arrays for ``split`` (``train_a`` / ``test_a`` prefixes, else all of them) when
    there are more than x and y; None otherwise."""
    import numpy as np
    import torch

    if not (str(path).endswith(".npz") and Path(path).is_file()):
        return None
    from .data import read_arrays

    arrays = read_arrays(path)
    prefixed = {k[len(split) + 1:]: v for k, v in arrays.items() if k.startswith(f"{split}_")}
    arrays = prefixed or {k: v for k, v in arrays.items() if not k.startswith(("train_", "test_"))}
    if "x" not in arrays or not set(arrays) - {"x", "y"}:
        return None
    from .data import _to_float

    out = {"x": _to_float(arrays.pop("x"))}
    out.update({k: torch.from_numpy(v) if v.dtype != np.uint8 else _to_float(v) for k, v in arrays.items()})
    if n is not None:
        out = {k: v[:n] for k, v in out.items()}
    return Members(out)


GREY_IMAGES = ("fashion-mnist-sample", "sample", "fashion-mnist", "fmnist", "mnist")


def binarization(args) -> str:
    """``--binarize auto``: dynamic for grey images under a Bernoulli likelihood (the standard
    protocol, and the demo's), none otherwise."""
    if args.binarize != "auto":
        return args.binarize
    bernoulli = getattr(args, "likelihood", "bernoulli") == "bernoulli" and not own_program(args)
    return "dynamic" if bernoulli and args.dataset in GREY_IMAGES else "none"


def load_split(args, split):
    n = args.n_train if split == "train" else args.n_test
    several = _npz_members(args.dataset, split, n)
    if several is not None:
        return several
    data = load_dataset(args.dataset, split, data_dir=args.data_dir, binarize=binarization(args), n=n)
    held_out = getattr(args, "exclude_class", None)
    if split == "train" and held_out is not None:  # anomaly detection: a class never seen in training
        if data.y is None or not bool((data.y == held_out).any()):
            raise ValueError(f"--exclude-class {held_out}: the training data have no such class")
        keep = data.y != held_out
        data = type(data)(data.x[keep], data.y[keep], name=data.name, binarize=data.binarize, classes=data.classes)
    return data


#: ``--model`` choices: the variant each builds, with which objective it trains by default
MODEL_CHOICES = {
    "vae": ("VAE (any guide family, MLP or conv nets)", "elbo"),
    "cvae": ("ConditionalVAE: labels in encoder, decoder and (--prior learned) prior", "elbo"),
    "m2": ("SemiSupervisedVAE (Kingma et al. 2014 M2), --labels training labels kept", "enum-elbo"),
    "structured": ("StructuredCVAE: predict the hidden quadrants from --visible ones", "elbo"),
    "gumbel": ("GumbelSoftmaxVAE: --num-vars categorical latents of --num-classes", "mf-elbo"),
    "ae": ("AE: point-mass guide (--noise > 0: denoising)", "elbo"),
    "vqvae": ("VQVAE: nearest-code point-mass guide, --num-codes codes", "elbo"),
}


#: the class each ``--model`` builds (a --preset of two layers: HierarchicalVAE)
MODEL_CLASSES = {"vae": "VAE", "cvae": "ConditionalVAE", "m2": "SemiSupervisedVAE", "structured": "StructuredCVAE",
                 "gumbel": "GumbelSoftmaxVAE", "ae": "AE", "vqvae": "VQVAE"}


def own_program(args) -> bool:
    """Whether ``--model`` names a program of the user's own (FILE.py:NAME or module:NAME)."""
    return args.model not in MODEL_CHOICES


def build_model(args, x_shape, num_classes: int = 10):
    from . import models
    from .presets import PRESETS, preset

    if own_program(args):
        from .pair import load_program

        return load_program(args.model)
    options = dict(rank=args.rank, flow_steps=args.flow_steps)
    learned = dict(prior=args.prior or "standard", prior_components=args.prior_components,
                   prior_flow_steps=args.prior_flow_steps)
    if (args.prior_components is not None or args.prior_flow_steps is not None) and args.model != "vae":
        raise ValueError("--prior-components and --prior-flow-steps shape the learned priors of --model vae")
    if args.preset:
        if args.preset not in PRESETS:
            raise ValueError(f"unknown preset {args.preset!r}; choose one of {sorted(PRESETS)}")
        if args.model != "vae":
            raise ValueError(f"--preset builds a VAE; it cannot be combined with --model {args.model}")
        extra = {"inference": args.inference} if "latent_dims" in PRESETS[args.preset][1] else {}
        return preset(args.preset, guide=args.guide, beta=args.beta, **options, **extra, **learned)

    flat = (math.prod(x_shape),)
    nets = dict(hidden=tuple(args.hidden), activation=args.activation, likelihood=args.likelihood)
    if args.prior is not None and args.model not in ("vae", "cvae", "ae"):
        raise ValueError(f"--prior applies to --model vae (standard, mog, vamp, flow), cvae (standard, learned) and "
                         f"ae (flat, normal), not {args.model}")
    if args.model == "vae":
        shape = tuple(x_shape) if args.net == "conv" else flat
        if args.net == "conv" and len(shape) == 2:  # (H, W) grey images: one channel
            shape = (1,) + shape
        return models.VAE(x_shape=shape, latent_dim=args.latent_dim, guide=args.guide, beta=args.beta, net=args.net,
                          likelihood_scale=args.likelihood_scale, **nets, **options, **learned)
    if args.model == "cvae":
        return models.ConditionalVAE(x_shape=flat, num_classes=num_classes, latent_dim=args.latent_dim,
                                     guide=args.guide, prior=args.prior or "standard", beta=args.beta, **nets,
                                     **options)
    if args.model == "m2":
        return models.SemiSupervisedVAE(x_shape=flat, num_classes=num_classes, latent_dim=args.latent_dim, **nets)
    if args.model == "structured":
        return models.StructuredCVAE(x_shape=tuple(x_shape), visible=args.visible, latent_dim=args.latent_dim, **nets)
    if args.model == "gumbel":
        return models.GumbelSoftmaxVAE(x_shape=flat, num_vars=args.num_vars, num_classes=args.num_classes,
                                       hard=args.hard, **nets)
    if args.model == "ae":
        return models.AE(x_shape=flat, latent_dim=args.latent_dim, prior=args.prior or "flat", noise=args.noise,
                         likelihood_scale=args.likelihood_scale, **nets)
    return models.VQVAE(x_shape=flat, num_codes=args.num_codes, code_dim=args.latent_dim, num_latents=args.num_latents,
                        likelihood_scale=args.likelihood_scale, **nets)


def training_data(args, train):
    """The training data the chosen variant learns from (M2: all but ``--labels`` labels hidden)."""
    if args.model != "m2":
        return train
    if train.y is None:
        raise ValueError("--model m2 needs a labelled dataset")
    from .data import semi_supervised

    return semi_supervised(train, args.labels, seed=args.seed)


def default_objective(args):
    if args.objective is not None:
        return args.objective
    return MODEL_CHOICES[args.model][1] if not own_program(args) else "elbo"


def _num_classes(data) -> int:
    return int(data.y.max()) + 1 if data.y is not None else 10


#: CLI options that configure the model, by the name its stored config uses
MODEL_OPTIONS = {"latent_dim": "latent_dim", "hidden": "hidden", "activation": "activation",
                 "likelihood": "likelihood", "guide": "guide", "beta": "beta", "net": "net", "rank": "rank",
                 "flow_steps": "flow_steps", "likelihood_scale": "likelihood_scale", "num_codes": "num_codes",
                 "num_vars": "num_vars", "num_classes": "num_classes", "noise": "noise", "visible": "visible",
                 "prior": "prior", "prior_components": "prior_components", "prior_flow_steps": "prior_flow_steps",
                 "num_latents": "num_latents"}
#: CLI options that configure training, by the name fit's stored config uses
FIT_OPTIONS = {"objective": "objective", "k": "k", "alpha": "alpha", "batch_size": "batch_size", "lr": "lr",
               "seed": "seed", "warmup_epochs": "warmup_epochs", "clip_grad": "clip_grad"}
DATA_OPTIONS = ("dataset", "binarize", "n_train", "n_test", "exclude_class")


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def resume_settings(args) -> None:
    """``--resume RUN``: the run continues as it was configured. Options the user did not give
    are taken from the run; an option given with another value than the run's is an error."""
    from .checkpoint import load_checkpoint, resolve
    from .runs import read_json

    state = load_checkpoint(args.resume)
    given, folder = getattr(args, "_given", set()), resolve(args.resume).parent
    saved_fit, saved_model = state["fit_config"], state["config"] or {}
    data = read_json(folder / "data.json") if (folder / "data.json").exists() else {}
    if "model" in given and not own_program(args) and state["model_class"] not in (MODEL_CLASSES.get(args.model),
                                                                                   "HierarchicalVAE"):
        raise ValueError(f"--model {args.model} conflicts with the run in {folder}, a {state['model_class']}; "
                         "resuming continues that run (start a new run to change it)")
    checks = [(k, saved_model.get(v), "model") for k, v in MODEL_OPTIONS.items() if v in saved_model]
    checks += [(k, saved_fit.get(v), "training") for k, v in FIT_OPTIONS.items() if v in saved_fit]
    checks += [(k, data.get(k), "data") for k in DATA_OPTIONS if k in data]
    for key, saved, kind in checks:
        mine = getattr(args, key, None)
        if key in given and _differs(mine, saved):
            raise ValueError(f"{_flag(key)} {_show(mine)} conflicts with the run in {folder}, whose {kind} setting is "
                             f"{_show(saved)}: resuming continues a run as it was configured (leave the option out, "
                             "or start a new run to change it)")
        if key not in given and hasattr(args, key):
            setattr(args, key, saved)
    if args.run_dir is None:
        args.run_dir = str(folder)


def _differs(mine, saved) -> bool:
    if isinstance(mine, (list, tuple)) or isinstance(saved, (list, tuple)):
        return list(mine or []) != list(saved or [])
    if isinstance(mine, (int, float)) and isinstance(saved, (int, float)):
        return float(mine) != float(saved)
    return mine != saved


def _show(v) -> str:
    return " ".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)


def cmd_train(args):
    from .runs import fresh, prepare

    if args.resume is not None:
        if not str(args.resume).strip():
            raise ValueError("--resume must name a run folder or checkpoint, got an empty string")
        resume_settings(args)
    main_rank = int(os.environ.get("RANK", "0")) == 0  # under torchrun, rank 0 owns the run folder
    if args.run_dir is None and "TORCHELASTIC_RUN_ID" in os.environ:  # one name for every rank
        args.run_dir = str(Path("runs") / f"{args.kind}-{os.environ['TORCHELASTIC_RUN_ID']}")
    run_dir = args.run_dir if args.run_dir is not None else fresh(args.kind)
    created = not Path(run_dir).exists()
    if main_rank:
        run_dir = prepare(run_dir, overwrite=args.overwrite, resume=args.resume)
    try:
        _train_in(args, run_dir, main_rank)
    except BaseException:
        if created and main_rank and Path(run_dir).is_dir() and not any(Path(run_dir).iterdir()):
            Path(run_dir).rmdir()  # a bad input found before anything was written leaves no empty folder
        raise


def _train_in(args, run_dir, main_rank):
    import pyro
    import torch

    from .callbacks import TensorBoard
    from .checkpoint import write_text
    from .runs import RunLock, dumps
    from .train import fit

    with RunLock(run_dir) if main_rank else contextlib.nullcontext():
        if main_rank:
            print(f"writing to {run_dir}", flush=True)
        train, test = load_split(args, "train"), load_split(args, "test")
        torch.manual_seed(args.seed)  # the same command builds the same initial weights
        pyro.set_rng_seed(args.seed)
        model = build_model(args, train.x.shape[1:], _num_classes(train))
        if args.resume and not own_program(args):
            from .checkpoint import load

            model = load(args.resume)
        h = fit(model, training_data(args, train), objective=default_objective(args), k=args.k, alpha=args.alpha,
                epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed, device=args.device,
                test=test, warmup_epochs=args.warmup_epochs, run_dir=run_dir, resume=args.resume,
                progress=not args.quiet, precision=args.precision, clip_grad=args.clip_grad,
                compile=compile_option(args),
                data_plate=getattr(args, "data_plate", None), overwrite=True,
                callbacks=[TensorBoard(args.tensorboard)] if getattr(args, "tensorboard", None) else ())
        data = {k: getattr(args, k, None) for k in ("dataset", "data_dir", "n_train", "n_test", "exclude_class")}
        data["binarize"] = binarization(args)
        if args.model == "vqvae" and getattr(args, "code_prior_epochs", 0) and main_rank:
            from .checkpoint import update_model
            from .code_prior import fit_code_prior

            fitted = fit_code_prior(h.model, train, test, epochs=args.code_prior_epochs, seed=args.seed,
                                    progress=not args.quiet)
            update_model(run_dir / "checkpoint.pt", h.model)  # the prior is part of the model from now on
            h.model._pvae_code_prior = {k: fitted[k] for k in ("test_nll", "uniform_nll", "codes_used")}
        if own_program(args):  # how `pvae eval` rebuilds it
            data.update(program=args.model, data_plate=h.program.data_plate)
        if not main_rank:
            return  # under torchrun: rank 0 evaluates and writes the run's files
        write_text(run_dir / "data.json", dumps(data))
        if args.eval_k > 0:
            s = report(h.model, test, run_dir, args.eval_k, history=h, progress=not args.quiet, seed=args.seed)
            print(results_table(s))
        print(f"run folder: {run_dir}")


def _open_run(args):
    """``args.run`` (a run folder or a checkpoint in one) -> (the run folder, the trained model)."""
    from .checkpoint import load
    from .runs import read_json

    if not str(args.run).strip():
        raise ValueError("the run must name a run folder or checkpoint, got an empty string")
    run_dir = Path(args.run)
    run_dir = run_dir if run_dir.is_dir() else run_dir.parent
    saved = read_json(run_dir / "data.json") if (run_dir / "data.json").exists() else {}
    if saved.get("program"):  # a program of the user's own: rebuilt from its spec, then loaded
        from .pair import load_program

        model = load(args.run, model=load_program(saved["program"]), map_location=args.device)
        model._pvae_data_plate = saved.get("data_plate")
        return run_dir, model
    return run_dir, load(args.run, map_location=args.device)


def _run_data(run_dir: Path, args, split: str = "test"):
    """The run's test (or training) data, as data.json recorded them."""
    from .runs import read_json

    saved = read_json(run_dir / "data.json") if (run_dir / "data.json").exists() else {}
    for key in ("dataset", "data_dir", "binarize", "n_test", "n_train", "exclude_class"):
        if getattr(args, key, None) is None:
            setattr(args, key, saved.get(key, {"dataset": EMBEDDED, "binarize": "none"}.get(key)))
    if split == "test":
        args.n_train = None
    args.model = saved.get("program") or "vae"
    return load_split(args, split)


def cmd_eval(args):
    from .runs import RunLock, prepare, read_json

    run_dir, model = _open_run(args)
    test = _run_data(run_dir, args)
    hist = read_json(run_dir / "history.json") if (run_dir / "history.json").exists() else None
    ais = dict(steps=args.steps, chains=args.chains, leapfrog=args.leapfrog) if args.method == "ais" else None
    name = f"eval-{args.method}-k{args.k}" + (f"-steps{args.steps}" if ais else "") + f"-seed{args.seed}"
    out = prepare(args.out if args.out else run_dir / name, overwrite=args.overwrite)  # never the training results
    with RunLock(out):
        s = report(model, test, out, args.k, history=hist, progress=not args.quiet, seed=args.seed, ais=ais)
    print(results_table(s))
    print(f"wrote {out}")


def cmd_bdmc(args):
    import torch

    from .ais import bdmc
    from .checkpoint import write_text

    run_dir, model = _open_run(args)
    test = _run_data(run_dir, args)
    data = None if hasattr(model, "x_shape") else test if isinstance(test, Members) else test.eval_x()[:args.n]
    rows = []
    for steps in args.steps:
        r = bdmc(model, n=args.n, steps=steps, chains=args.chains, leapfrog=args.leapfrog, data=data, seed=args.seed,
                 progress=not args.quiet, data_plate=getattr(model, "_pvae_data_plate", None))
        rows.append(r["summary"])
        torch.save({k: r[k] for k in ("lower", "upper", "gap")}, run_dir / f"bdmc_{steps}.pt")
    write_text(run_dir / "bdmc.json", json.dumps(rows, indent=1))
    lines = ["| steps | chains | lower (forward AIS) | upper (reverse AIS) | gap | seconds |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['steps']} | {r['chains']} | {r['lower']:.3f} | {r['upper']:.3f} | {r['gap']:.3f} | {r['seconds']:.1f} |"
              for r in rows]
    print(f"BDMC on {args.n} datapoints simulated from the model (mean log p(x) bounds, nats):\n")
    print("\n".join(lines))
    print(f"wrote {run_dir / 'bdmc.json'}")


def cmd_sample(args):
    import torch

    from . import plots

    run_dir, model = _open_run(args)
    if args.sampler == "gmm":  # an ex-post sampler fitted to the codes of the run's training data
        from .samplers import fit_sampler

        sampler = fit_sampler(model, _run_data(run_dir, args, "train"), kind="gmm", components=args.components,
                              seed=args.seed)
        draw = lambda n: sampler.sample(n, seed=args.seed)  # noqa: E731
    elif not hasattr(model, "sample") or not getattr(model, "can_sample", True):
        why = {"StructuredCVAE": "it predicts hidden quadrants from visible ones (StructuredCVAE.complete)",
               "VQVAE": "its prior over codes is not learned (train with --code-prior-epochs > 0, or "
                        "pvae.fit_code_prior)",
               "AE": "a point-mass autoencoder has no generative prior (use --sampler gmm)"}.get(type(model).__name__)
        raise ValueError(f"{type(model).__name__} cannot sample: {why}" if why else
                         f"{type(model).__name__} has no sample() method")
    else:
        def draw(n):
            torch.manual_seed(args.seed)
            return model.sample(n)
    name = f"samples-n{args.n}-seed{args.seed}" + ("-gmm" if args.sampler == "gmm" else "")
    out = Path(args.out) if args.out else run_dir / f"{name}.png"
    images = draw(args.n).cpu()
    ncol = math.ceil(math.sqrt(args.n))
    plots.image_grid([images[i:i + ncol] for i in range(0, len(images), ncol)], out)
    if args.save_tensor:
        torch.save(images, out.with_suffix(".pt"))
    print(f"wrote {out}")


def cmd_compare(args):
    from .compare import compare
    from .runs import fresh

    run_dir = args.run_dir if args.run_dir is not None else fresh("compare")
    train, test = load_split(args, "train"), load_split(args, "test")
    def model():  # called after compare() seeds: every objective starts from the same weights
        return build_model(args, train.x.shape[1:], _num_classes(train))

    out = compare(model, training_data(args, train), test, args.objectives, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                  seed=args.seed, device=args.device, eval_k=args.eval_k, run_dir=run_dir,
                  progress=not args.quiet, data_plate=args.data_plate, overwrite=args.overwrite,
                  ais=dict(steps=args.ais_steps, chains=args.ais_chains) if args.ais_steps else None)
    print(out["table"])
    print(f"run folder: {run_dir}")


def compile_option(args):
    """fit's ``compile`` from ``--compile`` (the nets) and ``--compile-step auto|on|off``."""
    if getattr(args, "compile", False):
        return True
    return {"on": "step", "off": False}.get(getattr(args, "compile_step", "auto"), "auto")


def cmd_demo(args):
    """Default MLP VAE on the embedded Fashion-MNIST sample, binarized dynamically."""
    for key, value in dict(dataset=EMBEDDED, data_dir=None, binarize="dynamic", n_train=None, n_test=None,
                           latent_dim=50, hidden=[200, 200], activation="tanh", likelihood="bernoulli",
                           guide="diagonal", beta=1.0, net="mlp", likelihood_scale=None, objective="elbo",
                           model="vae", prior=None, prior_components=None, prior_flow_steps=None,
                           preset=None, inference="bottom-up", rank=None, flow_steps=None,
                           k=1, alpha=0.5, batch_size=100, lr=1e-3, warmup_epochs=0, resume=None, precision="fp32",
                           compile=False, clip_grad=None, exclude_class=None).items():
        setattr(args, key, value)
    if args.smoke:
        args.epochs, args.eval_k, args.n_train, args.n_test = 1, 10, 500, 100
        args.kind = "demo-smoke"  # never in the real demo's folder
    t0 = time.perf_counter()
    cmd_train(args)
    print(f"demo wall time: {time.perf_counter() - t0:.1f} s")


def cmd_apply(args):
    """Anomaly detection, denoising or inpainting with a trained run, on its test data."""
    import torch

    from . import plots
    from .applications import anomaly_scores, auroc, corrupt, inpaint
    from .checkpoint import write_text

    run_dir, model = _open_run(args)
    test = _run_data(run_dir, args)
    x = test.eval_x().reshape(len(test), -1).to(model.device)
    out = Path(args.out) if args.out else run_dir / f"{args.task}.png"
    torch.manual_seed(args.seed)
    if args.task == "anomaly":
        if args.anomaly_class is None:  # the class the run left out of training (--exclude-class)
            args.anomaly_class = getattr(args, "exclude_class", None)
        if args.anomaly_class is None or test.y is None:
            raise ValueError("--task anomaly needs --anomaly-class C and a labelled test set")
        if getattr(model, "point_mass", False) or getattr(model, "needs_labels", False):
            raise ValueError(f"anomaly scores are -log p(x): {type(model).__name__} has no unconditional "
                             "log p(x) to estimate")
        scores = anomaly_scores(model, x, k=args.k, progress=not args.quiet)
        is_anomaly = test.y == args.anomaly_class
        result = {"task": "anomaly", "anomaly_class": args.anomaly_class, "k": args.k, "n": len(test),
                  "auroc": auroc(scores, is_anomaly), "mean_score_anomaly": float(scores[is_anomaly].mean()),
                  "mean_score_normal": float(scores[~is_anomaly].mean())}
        plots.score_histogram(scores, is_anomaly, path=out)
        print(f"AUROC {result['auroc']:.3f}: class {args.anomaly_class} scores -log p(x) "
              f"{result['mean_score_anomaly']:.1f} on average, the rest {result['mean_score_normal']:.1f}")
    else:
        if not hasattr(model, "reconstruct") or getattr(model, "needs_labels", False):
            raise ValueError(f"--task {args.task} needs a model with reconstruct(x); {type(model).__name__} has none")
        if args.task == "denoise":
            noisy = corrupt(x, args.noise, kind=args.corruption, seed=args.seed)
            done, ref = model.reconstruct(noisy).reshape(x.shape), noisy
            mask = torch.ones_like(x, dtype=torch.bool)
            plots.denoising(x, noisy, {type(model).__name__: done}, path=out)
        else:
            if not hasattr(model, "posterior"):
                raise ValueError(f"inpainting needs a model with one latent site and posterior(x) (VAE); "
                                 f"{type(model).__name__} has none")
            side = math.isqrt(x.shape[1])
            observed = torch.ones(len(test), side, side, dtype=torch.bool, device=x.device)
            observed[:, side // 2:] = False  # the bottom half is missing
            observed = observed.reshape(len(test), -1)
            done = inpaint(model, x, observed, k=args.k)
            ref = x.mean(0, keepdim=True).expand_as(x)  # the mean test image (compared on missing pixels only)
            mask = ~observed
            plots.image_grid([x[:10], (x * observed)[:10], done[:10]], out, titles=["original", "observed", "inpainted"])
        err = float(((done - x)[mask] ** 2).mean())
        ref_err = float(((ref - x)[mask] ** 2).mean())
        what = "corrupted input" if args.task == "denoise" else "mean test image"
        result = {"task": args.task, "n": len(test), "mse": err, "mse_reference": ref_err, "reference": what}
        print(f"{args.task}: squared error {err:.4f} against the clean images ({what}: {ref_err:.4f})")
    write_text(run_dir / f"{args.task}.json", json.dumps(result, indent=1))
    print(f"wrote {out} and {run_dir / (args.task + '.json')}")


class _Formatter(argparse.HelpFormatter):
    """Fixed width, so the generated reference does not depend on the terminal; every option's
    default shown."""

    def __init__(self, prog):
        super().__init__(prog, width=100, max_help_position=32)

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default not in (None, argparse.SUPPRESS, False) and action.option_strings and "%(default)" not in text:
            text += (" " if text else "") + "(default: %(default)s)"
        return text


# -- argument types: a bad value is one line from argparse (exit 2) -------------------------------
def _integer(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is below the minimum {minimum}")
        return value
    parse.__name__ = f"integer >= {minimum}"
    return parse


def _real(low=None, open_low=False, high=None):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text} is not a finite number")
        if low is not None and (value <= low if open_low else value < low) or high is not None and value > high:
            bounds = f"{'>' if open_low else '>='} {low:g}" if low is not None else ""
            bounds += (" and " if bounds and high is not None else "") + (f"<= {high:g}" if high is not None else "")
            raise argparse.ArgumentTypeError(f"{value:g} is out of range (it must be {bounds})")
        return value
    parse.__name__ = "number"
    return parse


POSITIVE, NATURAL = _integer(1), _integer(0)


# -- the parser ---------------------------------------------------------------------------------
def _add_data_args(p, defaults=True):
    p.add_argument("--dataset", default=EMBEDDED if defaults else None,
                   help=f"dataset name ({EMBEDDED}, fashion-mnist, mnist, binarized-mnist) or a .npy/.npz path")
    p.add_argument("--data-dir", default=None, help="folder with the dataset's files (else $PVAE_DATA, Debian's, download)")
    p.add_argument("--binarize", choices=BINARIZE + ("auto",), default="auto" if defaults else None,
                   help="binarization of grey images (dynamic: resampled every epoch; auto: dynamic for grey "
                   "images under a Bernoulli likelihood, else none)")
    p.add_argument("--n-test", type=POSITIVE, default=None, help="use only the first N test datapoints")


def _add_common(p):
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--seed", type=NATURAL, default=0, help="random seed")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _model_choice(value: str) -> str:
    if value in MODEL_CHOICES or ":" in value:
        return value
    raise argparse.ArgumentTypeError(f"invalid choice: {value!r} (choose from {', '.join(MODEL_CHOICES)}, or "
                                     "FILE.py:NAME / module:NAME for a model/guide pair of your own)")


def _add_model_args(p):
    p.add_argument("--model", type=_model_choice, default="vae", metavar="MODEL",
                   help="the variant: " + "; ".join(f"{k}: {v[0]}" for k, v in MODEL_CHOICES.items())
                   + "; or FILE.py:NAME / module:NAME, a model/guide pair of your own (an nn.Module class with "
                   ".model/.guide, built with no arguments)")
    p.add_argument("--data-plate", default=None, metavar="NAME",
                   help="your own program: the plate over datapoints (default: found by tracing it once)")
    p.add_argument("--preset", default=None, help="the IWAE paper's nets: iwae-1layer or iwae-2layer (a "
                   "two-layer HierarchicalVAE); replaces the size arguments")
    p.add_argument("--inference", choices=("bottom-up", "ladder"), default="bottom-up",
                   help="inference network of the two-layer preset")
    p.add_argument("--latent-dim", type=POSITIVE, default=50, help="size of the latent z")
    p.add_argument("--hidden", type=POSITIVE, nargs="+", default=[200, 200], help="hidden widths of the encoder")
    p.add_argument("--activation", choices=sorted(ACTIVATIONS), default="tanh")
    p.add_argument("--likelihood", choices=sorted(LIKELIHOODS), default="bernoulli")
    p.add_argument("--likelihood-scale", type=_real(0, open_low=True), default=None, help="fixed sigma for --likelihood gaussian")
    p.add_argument("--guide", choices=sorted(GUIDES), default="diagonal")
    p.add_argument("--rank", type=POSITIVE, default=None, help="rank of the lowrank guide (default 2)")
    p.add_argument("--flow-steps", type=POSITIVE, default=None, help="IAF steps of the iaf guide (default 2)")
    p.add_argument("--net", choices=("mlp", "conv"), default="mlp", help="encoder/decoder nets")
    p.add_argument("--beta", type=_real(0, open_low=True), default=1.0, help="weight of the KL term (beta-VAE)")
    p.add_argument("--prior", default=None, help="vae: standard, mog, vamp or flow (learned priors, see docs/priors.md); "
                   "cvae: standard or learned (p(z|y)); ae: flat or normal")
    p.add_argument("--prior-components", type=POSITIVE, default=None,
                   help="vae: components of the mog (default 10) or vamp (default 100) prior")
    p.add_argument("--prior-flow-steps", type=POSITIVE, default=None, help="vae: steps of the flow prior (default 2)")
    p.add_argument("--labels", type=POSITIVE, default=100, help="m2: how many training labels are kept")
    p.add_argument("--visible", type=int, choices=(1, 2, 3), default=1, help="structured: visible quadrants")
    p.add_argument("--num-vars", type=POSITIVE, default=20, help="gumbel: number of categorical latents")
    p.add_argument("--num-classes", type=_integer(2), default=10, help="gumbel: classes of each categorical latent")
    p.add_argument("--hard", action="store_true", help="gumbel: straight-through (one-hot forward pass)")
    p.add_argument("--noise", type=_real(0, high=0.999), default=0.0, help="ae: masking probability of the denoising AE")
    p.add_argument("--num-codes", type=POSITIVE, default=64, help="vqvae: codebook size (--latent-dim: code size)")
    p.add_argument("--num-latents", type=POSITIVE, default=4, help="vqvae: codes per datapoint")
    p.add_argument("--code-prior-epochs", type=NATURAL, default=20,
                   help="vqvae: epochs of the autoregressive code prior fitted after training (0: none; then the "
                   "model cannot sample)")


def _add_ais_args(p, many=False):
    if many:
        p.add_argument("--steps", type=_integer(2), nargs="+", default=[10, 100, 500],
                       help="annealing steps (one run each)")
    else:
        p.add_argument("--steps", type=_integer(2), default=500, help="AIS annealing steps")
    p.add_argument("--chains", type=POSITIVE, default=16, help="AIS chains per datapoint")
    p.add_argument("--leapfrog", type=POSITIVE, default=10, help="leapfrog steps per HMC transition")


def _add_run_args(p, kind):
    p.add_argument("--run-dir", default=None, help=f"the run folder (default: a new runs/{kind}-DATE-TIME)")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in --run-dir")
    p.set_defaults(kind=kind)


def _add_budget_args(p):
    p.add_argument("--epochs", type=NATURAL, default=10, help="passes over the training data")
    p.add_argument("--batch-size", type=POSITIVE, default=100, help="datapoints per step")
    p.add_argument("--lr", type=_real(0, open_low=True), default=1e-3, help="Adam's learning rate")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="pvae", formatter_class=_Formatter, description="Variational autoencoders as Pyro model/guide pairs.")
    sub = ap.add_subparsers(dest="command", required=True, metavar="{train,eval,sample,apply,compare,demo}")

    t = sub.add_parser("train", formatter_class=_Formatter, help="train a VAE and evaluate it", description="Train a VAE by SVI, then "
                       "evaluate log p(x) with k importance samples; everything goes into --run-dir.")
    _add_data_args(t)
    t.add_argument("--n-train", type=POSITIVE, default=None, help="use only the first N training datapoints")
    t.add_argument("--exclude-class", type=NATURAL, default=None,
                   help="leave this class out of training (then: pvae apply RUN --task anomaly)")
    _add_model_args(t)
    t.add_argument("--objective", default=None, metavar="SPEC",
                   help=f"objective name or spec such as iwae:k=50, renyi:k=5,alpha=0.5, miwae:k=64,M=8 "
                   f"(names: {', '.join(OBJECTIVES)}; default: elbo, enum-elbo for m2, mf-elbo for gumbel)")
    t.add_argument("--k", type=POSITIVE, default=1, help="particles (importance samples) per datapoint in training")
    t.add_argument("--alpha", type=_real(), default=0.5, help="alpha of the renyi objective")
    _add_budget_args(t)
    t.add_argument("--warmup-epochs", type=_real(0), default=0, help="epochs of linear KL warm-up")
    t.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                   help="arithmetic of the nets (log-densities stay float32)")
    t.add_argument("--compile", action="store_true", help="torch.compile the nets")
    t.add_argument("--compile-step", nargs="?", const="on", default="auto", choices=("auto", "on", "off"),
                   help="trace and compile the whole training step once per batch shape; auto: when the first 5 "
                        "steps show the run long enough for compiling to pay (docs/training.md)")
    t.add_argument("--clip-grad", type=_real(0, open_low=True), default=None, help="clip the gradients' global norm")
    t.add_argument("--eval-k", type=NATURAL, default=5000, help="importance samples for test log p(x) (0: skip)")
    _add_run_args(t, "train")
    t.add_argument("--resume", default=None, help="run folder or checkpoint to continue (in that folder unless "
                   "--run-dir); its settings are kept, and an option given with another value is an error")
    t.add_argument("--tensorboard", default=None, metavar="DIR",
                   help="also log every epoch's numbers to TensorBoard in DIR (needs the tensorboard package)")
    _add_common(t)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", formatter_class=_Formatter, help="evaluate a trained run", description="Importance-sampled test log p(x), "
                       "ELBO terms, active units and PSIS k-hat of a run; writes results.json and figures.")
    e.add_argument("run", help="run folder or checkpoint")
    _add_data_args(e, defaults=False)
    e.add_argument("--k", type=POSITIVE, default=5000, help="importance samples per datapoint")
    e.add_argument("--method", choices=("is", "ais"), default="is",
                   help="ais: also annealed importance sampling (HMC transitions), reported next to IS")
    _add_ais_args(e)
    e.add_argument("--out", default=None, help="folder for the results and figures (default: "
                   "RUN/eval-METHOD-kK-seedS; the training-time results are never overwritten)")
    e.add_argument("--overwrite", action="store_true", help="replace an earlier evaluation in that folder")
    _add_common(e)
    e.set_defaults(func=cmd_eval)

    b = sub.add_parser("bdmc", formatter_class=_Formatter, help="bidirectional Monte Carlo on simulated data",
                       description="Simulate --n datapoints from a run's model, run forward AIS (a stochastic lower "
                       "bound on log p(x)) and reverse AIS from the exact latents (an upper bound) for each --steps "
                       "value; writes bdmc.json and a table of the gap per number of steps.")
    b.add_argument("run", help="run folder or checkpoint")
    b.add_argument("--n", type=POSITIVE, default=100, help="simulated datapoints")
    _add_ais_args(b, many=True)
    _add_common(b)
    b.set_defaults(func=cmd_bdmc)

    s = sub.add_parser("sample", formatter_class=_Formatter, help="draw samples from a trained model", description="Decode z ~ p(z) to an image grid.")
    s.add_argument("run", help="run folder or checkpoint")
    s.add_argument("--n", type=POSITIVE, default=64, help="samples to draw")
    s.add_argument("--out", default=None, help="PNG path (default: RUN/samples-nN-seedS.png)")
    s.add_argument("--save-tensor", action="store_true", help="also save the samples as a .pt tensor")
    s.add_argument("--sampler", choices=("prior", "gmm"), default="prior",
                   help="prior: z ~ p(z) (VQ-VAE: its code prior); gmm: a Gaussian mixture fitted to the codes "
                   "E_q[z|x] of the run's training data (works for AE too)")
    s.add_argument("--components", type=POSITIVE, default=10, help="gmm: mixture components")
    _add_common(s)
    s.set_defaults(func=cmd_sample)

    a = sub.add_parser("apply", formatter_class=_Formatter, help="anomaly detection, denoising or inpainting",
                       description="Use a trained run on its test data: --task anomaly scores -log p(x) and "
                       "reports the AUROC of --anomaly-class (train with --exclude-class); denoise reconstructs "
                       "corrupted images; inpaint fills in the bottom half from the top. Writes TASK.json and "
                       "TASK.png into the run folder.")
    a.add_argument("run", help="run folder or checkpoint")
    a.add_argument("--task", choices=("anomaly", "denoise", "inpaint"), required=True)
    a.add_argument("--anomaly-class", type=NATURAL, default=None,
                   help="anomaly: the class that counts as anomalous (default: the run's --exclude-class)")
    a.add_argument("--k", type=POSITIVE, default=1000, help="importance samples (anomaly, inpaint)")
    a.add_argument("--noise", type=_real(0, high=1), default=0.5, help="denoise: corruption strength")
    a.add_argument("--corruption", choices=("mask", "flip", "gaussian"), default="mask")
    a.add_argument("--out", default=None, help="PNG path (default: RUN/TASK.png)")
    _add_data_args(a, defaults=False)
    _add_common(a)
    a.set_defaults(func=cmd_apply)

    c = sub.add_parser("compare", formatter_class=_Formatter, help="compare inference objectives",
                       description="Train one model configuration under each objective with identical seeds, "
                       "data and budget; evaluate every run with the same evaluator; write a table (markdown, "
                       "CSV, JSON) and figures into --run-dir.")
    _add_data_args(c)
    c.add_argument("--n-train", type=POSITIVE, default=None, help="use only the first N training datapoints")
    _add_model_args(c)
    c.add_argument("--objectives", nargs="+", default=["elbo", "iwae:k=5"], metavar="SPEC",
                   help="objective specs, e.g. elbo mf-elbo iwae:k=5 iwae:k=50 iwae-dreg:k=50 renyi:k=5,alpha=0.5")
    _add_budget_args(c)
    c.add_argument("--eval-k", type=POSITIVE, default=5000, help="importance samples for test log p(x)")
    c.add_argument("--ais-steps", type=NATURAL, default=0, help="also AIS log p(x) with this many steps (0: none)")
    c.add_argument("--ais-chains", type=POSITIVE, default=16, help="AIS chains per datapoint")
    _add_run_args(c, "compare")
    _add_common(c)
    c.set_defaults(func=cmd_compare)

    d = sub.add_parser("demo", formatter_class=_Formatter, help="the main job: a VAE on the embedded Fashion-MNIST sample",
                       description="Train the default MLP VAE (784-200-200-50, tanh, Bernoulli) on the embedded "
                       "Fashion-MNIST sample (5,000 train / 1,000 test, dynamically binarized), evaluate test "
                       "log p(x) with k = 5000, and print a results table.")
    d.add_argument("--epochs", type=NATURAL, default=30, help="passes over the training data")
    d.add_argument("--eval-k", type=NATURAL, default=5000, help="importance samples for test log p(x)")
    _add_run_args(d, "demo")
    d.add_argument("--smoke", action="store_true", help="a tiny budget (seconds), to check the install")
    _add_common(d)
    d.set_defaults(func=cmd_demo)
    return ap


def markdown_reference() -> str:
    """The CLI reference (docs/cli.md), generated from the parser: ``python -m pvae.cli --markdown``."""
    ap = parser()
    sub = next(a for a in ap._actions if isinstance(a, argparse._SubParsersAction))
    parts = ["# Command line\n", "Generated from the parser (`python -m pvae.cli --markdown > docs/cli.md`); "
             "a test keeps it in sync.\n", "```text\n" + ap.format_help() + "```\n"]
    for name, p in sub.choices.items():
        parts.append(f"## pvae {name}\n\n```text\n{p.format_help()}```\n")
    return "\n".join(parts)


def _given(argv) -> set:
    """The options the user typed (not defaults): ``--resume`` keeps the run's settings for the rest."""
    given = set()
    for a in argv:
        if a.startswith("--"):
            given.add(a[2:].split("=", 1)[0].replace("-", "_"))
    return given


class Terminated(Exception):
    """SIGTERM or SIGHUP: raised inside the work so that files being written are cleaned up."""


def _on_signal(signum, frame):
    raise Terminated(signal.Signals(signum).name)


#: the options whose size a memory error is about, per command
SIZES = {"train": ("k", "batch_size", "latent_dim", "hidden"), "compare": ("batch_size", "latent_dim", "hidden", "eval_k"),
         "eval": ("k",), "sample": ("n",), "apply": ("k",), "bdmc": ("n", "chains"), "demo": ("eval_k",)}


def _warning_line(message, category, filename, lineno, file=None, line=None):
    """A warning on the command line: one line, ``pvae: warning: ...`` (not Python's file, line and
    source)."""
    print(f"pvae: warning: {str(message).splitlines()[0] if str(message) else category.__name__}",
          file=file or sys.stderr)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    args._given = _given(argv)
    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGTERM, signal.SIGHUP)}
    shown = warnings.showwarning
    warnings.showwarning = _warning_line
    try:
        if getattr(args, "device", None) is not None:
            from .train import resolve_device

            resolve_device(args.device)
        args.func(args)
    except (ValueError, TypeError, FileNotFoundError, FloatingPointError) as e:
        print(f"pvae: error: {_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pvae: interrupted; the last checkpoint is kept", file=sys.stderr)
        return 130
    except Terminated as e:
        print(f"pvae: stopped by {e}; the last checkpoint is kept", file=sys.stderr)
        return 143
    except (OSError, MemoryError, RuntimeError) as e:
        oom = out_of_memory(e)
        if oom is None and not isinstance(e, OSError):
            raise
        if oom is not None:
            sizes = [f"{_flag(k)} {_show(getattr(args, k))}" for k in SIZES.get(args.command, ()) if hasattr(args, k)]
            oom += f"; lower {', '.join(sizes)}" if sizes else ""
        print(f"pvae: error: {oom or _line(e)}", file=sys.stderr)
        return 2
    finally:
        warnings.showwarning = shown
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 0


def _line(e: BaseException) -> str:
    """The first line of an error's message (a message never spills over several lines)."""
    text = str(e).strip()
    if isinstance(e, OSError) and e.strerror:
        text = f"{e.strerror}: {e.filename}" if e.filename else e.strerror
    return text.splitlines()[0] if text else type(e).__name__


if __name__ == "__main__":
    if sys.argv[1:] == ["--markdown"]:
        print(markdown_reference(), end="")
        sys.exit(0)
    sys.exit(main())
