"""The ``pvae`` command: ``pvae train | eval | sample | apply | compare | demo``, each with ``--help``.

Everything a run makes goes into one run folder: ``config.json``, ``history.json``/``.csv``,
``checkpoint.pt``, figures (PNG), ``results.json`` and a short ``summary.md``.
Bad input prints one line (``pvae: error: ...``) and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

from .data import BINARIZE, EMBEDDED, load_dataset
from .guides import GUIDES
from .likelihoods import LIKELIHOODS
from .nets import ACTIVATIONS
from .objectives import OBJECTIVES


# -- the work, shared by the commands -----------------------------------------------------------
class Members(dict):
    """Several arrays per datapoint (an .npz with arrays besides x and y), by name, x first: they
    reach a program of your own as keyword arguments (see :mod:`pvae.inputs`)."""

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
    with np.load(path, allow_pickle=False) as z:
        arrays = dict(z)
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


def load_split(args, split):
    n = args.n_train if split == "train" else args.n_test
    several = _npz_members(args.dataset, split, n)
    if several is not None:
        return several
    data = load_dataset(args.dataset, split, data_dir=args.data_dir, binarize=args.binarize, n=n)
    held_out = getattr(args, "exclude_class", None)
    if split == "train" and held_out is not None:  # anomaly detection: a class never seen in training
        if data.y is None or not bool((data.y == held_out).any()):
            raise ValueError(f"--exclude-class {held_out}: the training data have no such class")
        keep = data.y != held_out
        data = type(data)(data.x[keep], data.y[keep], name=data.name, binarize=data.binarize)
    return data


class _SafePlots:
    """pvae.plots where a failing figure costs only that figure: one line on stderr, no traceback."""

    def __init__(self):
        from . import plots

        self._plots = plots

    def __getattr__(self, name):
        fn = getattr(self._plots, name)

        def draw(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - results are already written; say what is missing
                print(f"pvae: figure {name} not drawn: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                      file=sys.stderr)
        return draw


def _figures(model, test, x, run_dir: Path) -> None:
    """The figures that fit ``model``: each variant draws what it has the methods for."""
    plots = _SafePlots()

    y = test.y
    if getattr(model, "needs_labels", False) and not hasattr(model, "classify"):
        n = min(10, x.shape[0])
        plots.image_grid([x[:n].to(model.device), model.reconstruct(x[:n].to(model.device), y[:n].to(model.device))],
                         run_dir / "reconstructions.png", titles=["input", "reconstruction"])
    elif hasattr(model, "complete"):  # structured output: the hidden part predicted from the visible
        plots.completions(model, x, path=run_dir / "completions.png")
    elif hasattr(model, "reconstruct"):
        plots.reconstructions(model, x, path=run_dir / "reconstructions.png")
    if hasattr(model, "num_classes") and getattr(model, "needs_labels", False):
        plots.class_samples(model, path=run_dir / "samples.png")
    elif hasattr(model, "sample"):
        plots.samples(model, path=run_dir / "samples.png")
    latent_dim = getattr(model, "latent_dim", None)
    continuous = (hasattr(model, "encode") and hasattr(model, "decode") and latent_dim
                  and not getattr(model, "needs_labels", False) and not hasattr(model, "complete"))
    if continuous:
        plots.latent_space(model, x, y, path=run_dir / "latent_space.png", max_points=x.shape[0])
        plots.interpolation(model, x[0], x[1], path=run_dir / "interpolation.png")
        if latent_dim == 2 and hasattr(model, "sample"):
            plots.latent_map(model, path=run_dir / "latent_map.png")
        if latent_dim >= 2:
            plots.traversal(model, x[0], path=run_dir / "traversal.png")


def report(model, test, run_dir: Path, k: int, history=None, progress=True, seed: int = 0, ais=None) -> dict:
    """Evaluate ``model`` on ``test``, draw the figures, write results.json and summary.md.

    Point-mass guides (AE, VQ-VAE) have no density to importance-sample with: they are scored by
    their reconstruction term alone (k = 1). A semi-supervised model is scored on unlabelled test
    data (log p(x), y summed out by sampling q(y|x)) and by its classifier's test accuracy.
    """
    import torch

    from .checkpoint import write_text
    from .evaluate import evaluate

    torch.manual_seed(seed)
    t0 = time.perf_counter()
    point_mass = getattr(model, "point_mass", False)
    semi = getattr(model, "missing_labels", False)
    labels = torch.full((len(test),), -1) if semi else None
    res = evaluate(model, test, k=1 if point_mass else k, progress=progress, khat=not point_mass, labels=labels,
                   data_plate=getattr(model, "_pvae_data_plate", None))
    s = dict(res["summary"], eval_seconds=time.perf_counter() - t0)
    if point_mass:
        s = {key: v for key, v in s.items() if key not in ("log_px", "log_px_se", "log_px_mc_se", "elbo", "kl", "ess")}
    elif ais is not None:  # annealed importance sampling next to importance sampling
        from .evaluate import log_likelihood, standard_error

        t1 = time.perf_counter()
        ll = log_likelihood(model, test, method="ais", progress=progress, labels=labels,
                            data_plate=getattr(model, "_pvae_data_plate", None), **ais)
        s.update(log_px_ais=float(ll.mean()), log_px_ais_se=standard_error(ll),
                 ais_minus_is=float((ll - res["log_px"]).mean()), ais_seconds=time.perf_counter() - t1,
                 ais_steps=ais["steps"], ais_chains=ais["chains"])
    x = test.eval_x()
    x = x.reshape((len(test),) + tuple(model.x_shape)) if hasattr(model, "x_shape") else x
    if semi:
        s["accuracy"] = model.accuracy(x, test.y)
    if hasattr(model, "reconstruct") and not (getattr(model, "needs_labels", False) and not semi):
        with torch.no_grad():  # in batches: mean squared error of reconstruct(x) against x
            s["recon_mse"] = sum(float(((model.reconstruct(xb.to(model.device)).cpu() - xb) ** 2).sum())
                                 for xb in x.split(1000)) / x.numel()
    if hasattr(model, "temperature"):
        s["temperature"] = model.temperature
    if history:
        s["train_seconds"] = sum(r["seconds"] for r in history)
        s["epochs"] = history[-1]["epoch"]
    write_text(run_dir / "results.json", json.dumps(s, indent=1))  # results first: a figure cannot lose them
    plots = _SafePlots()
    _figures(model, test, x, run_dir)
    if "khat" in res:
        plots.khat_histogram(res["khat"], path=run_dir / "khat.png")
    if history:
        plots.training_curves(history, path=run_dir / "training_curves.png")
    write_text(run_dir / "summary.md", summary_markdown(s, run_dir))
    return s


ROWS = [("accuracy", "test accuracy of q(y|x)"), ("log_px", "test log p(x) (nats, importance-sampled)"),
        ("log_px_se", "  standard error of that mean (over test datapoints)"),
        ("log_px_mc_se", "  of which Monte Carlo (the sampler's own)"),
        ("log_px_ais", "test log p(x) by AIS (nats)"), ("log_px_ais_se", "  standard error of that mean"),
        ("ais_minus_is", "  AIS minus IS, mean per datapoint"), ("ais_steps", "  AIS steps"),
        ("ais_chains", "  AIS chains"), ("ais_seconds", "  AIS seconds"), ("elbo", "test ELBO"),
        ("recon", "  reconstruction E_q[log p(x|z)]"), ("recon_mse", "reconstruction mean squared error"), ("kl", "  KL(q(z|x) || p(z))"),
        ("active_units", "active units (Cov_x E_q[u] > 0.01)"), ("ess", "importance-sampling ESS"),
        ("khat_median", "PSIS k-hat, median"), ("khat_max", "PSIS k-hat, max"),
        ("khat_gt_0_7", "share of k-hat > 0.7"), ("temperature", "Gumbel-softmax temperature at the end"),
        ("train_seconds", "training seconds"),
        ("eval_seconds", "evaluation seconds")]


def results_table(s: dict) -> str:
    lines = ["| quantity | value |", "|---|---|"]
    for key, label in ROWS:
        if key in s:
            v = s[key]
            cell = label.replace("|", "\\|")  # a bare | inside a cell would end it
            lines.append(f"| {cell} | {v if isinstance(v, int) else f'{v:.3f}'} |")
    lines += [f"\nNote: {note}." for note in s.get("notes", [])]
    return "\n".join(lines)


def summary_markdown(s: dict, run_dir: Path) -> str:
    figs = [f for f in ("reconstructions", "completions", "samples", "latent_space", "latent_map", "interpolation",
                        "traversal", "training_curves", "khat") if (run_dir / f"{f}.png").exists()]
    return (f"# pvae run `{run_dir.name}`\n\n{s['n']} test datapoints, k = {s['k']} importance samples.\n\n"
            + results_table(s) + "\n\n" + "\n".join(f"![{f}]({f}.png)" for f in figs) + "\n")


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
    if args.preset:
        if args.preset not in PRESETS:
            raise ValueError(f"unknown preset {args.preset!r}; choose one of {sorted(PRESETS)}")
        if args.model != "vae":
            raise ValueError(f"--preset builds a VAE; it cannot be combined with --model {args.model}")
        extra = {"inference": args.inference} if "latent_dims" in PRESETS[args.preset][1] else {}
        return preset(args.preset, guide=args.guide, beta=args.beta, **options, **extra)

    flat = (math.prod(x_shape),)
    nets = dict(hidden=tuple(args.hidden), activation=args.activation, likelihood=args.likelihood)
    if args.prior is not None and args.model not in ("cvae", "ae"):
        raise ValueError(f"--prior applies to --model cvae (standard, learned) and ae (flat, normal), not {args.model}")
    if args.model == "vae":
        shape = tuple(x_shape) if args.net == "conv" else flat
        if args.net == "conv" and len(shape) == 2:  # (H, W) grey images: one channel
            shape = (1,) + shape
        return models.VAE(x_shape=shape, latent_dim=args.latent_dim, guide=args.guide, beta=args.beta, net=args.net,
                          likelihood_scale=args.likelihood_scale, **nets, **options)
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
    return models.VQVAE(x_shape=flat, num_codes=args.num_codes, code_dim=args.latent_dim,
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


def cmd_train(args):
    from .checkpoint import write_text
    from .train import fit

    train, test = load_split(args, "train"), load_split(args, "test")
    model = build_model(args, train.x.shape[1:], _num_classes(train))
    if args.resume and not own_program(args):
        from .checkpoint import load

        model = load(args.resume)
    run_dir = Path(args.run_dir)
    h = fit(model, training_data(args, train), objective=default_objective(args), k=args.k, alpha=args.alpha, epochs=args.epochs,
            batch_size=args.batch_size, lr=args.lr, seed=args.seed, device=args.device, test=test,
            warmup_epochs=args.warmup_epochs, run_dir=run_dir, resume=args.resume, progress=not args.quiet,
            precision=args.precision, compile=args.compile, clip_grad=args.clip_grad,
            data_plate=getattr(args, "data_plate", None))
    data = {k: getattr(args, k) for k in ("dataset", "data_dir", "binarize", "n_test")}
    if own_program(args):  # how `pvae eval` rebuilds it
        data.update(program=args.model, data_plate=h.program.data_plate)
    if int(os.environ.get("RANK", "0")) != 0:
        return  # under torchrun: rank 0 evaluates and writes the run's files
    write_text(run_dir / "data.json", json.dumps(data, indent=1))
    if args.eval_k > 0:
        s = report(h.model, test, run_dir, args.eval_k, history=h, progress=not args.quiet, seed=args.seed)
        print(results_table(s))
    print(f"run folder: {run_dir}")


def _open_run(args):
    """``args.run`` (a run folder or a checkpoint in one) -> (the run folder, the trained model)."""
    from .checkpoint import load

    run_dir = Path(args.run)
    run_dir = run_dir if run_dir.is_dir() else run_dir.parent
    saved = json.loads((run_dir / "data.json").read_text()) if (run_dir / "data.json").exists() else {}
    if saved.get("program"):  # a program of the user's own: rebuilt from its spec, then loaded
        from .pair import load_program

        model = load(args.run, model=load_program(saved["program"]), map_location=args.device)
        model._pvae_data_plate = saved.get("data_plate")
        return run_dir, model
    return run_dir, load(args.run, map_location=args.device)


def _run_data(run_dir: Path, args):
    saved = json.loads((run_dir / "data.json").read_text()) if (run_dir / "data.json").exists() else {}
    for key in ("dataset", "data_dir", "binarize", "n_test"):
        if getattr(args, key, None) is None:
            setattr(args, key, saved.get(key, {"dataset": EMBEDDED, "binarize": "none"}.get(key)))
    args.n_train = None
    return load_split(args, "test")


def cmd_eval(args):
    run_dir, model = _open_run(args)
    test = _run_data(run_dir, args)
    hist = json.loads((run_dir / "history.json").read_text()) if (run_dir / "history.json").exists() else None
    ais = dict(steps=args.steps, chains=args.chains, leapfrog=args.leapfrog) if args.method == "ais" else None
    s = report(model, test, run_dir, args.k, history=hist, progress=not args.quiet, seed=args.seed, ais=ais)
    print(results_table(s))


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
    if not hasattr(model, "sample"):
        why = {"StructuredCVAE": "it predicts hidden quadrants from visible ones (StructuredCVAE.complete)",
               "VQVAE": "its prior over codes is not learned (fit one, e.g. a PixelCNN, over encode(x))",
               "AE": "a point-mass autoencoder has no generative prior"}.get(type(model).__name__, "")
        raise ValueError(f"{type(model).__name__} has no sample(): {why}" if why else
                         f"{type(model).__name__} has no sample() method")
    out = Path(args.out) if args.out else run_dir / "samples.png"
    plots.samples(model, n=args.n, path=out, seed=args.seed)
    if args.save_tensor:
        torch.manual_seed(args.seed)
        torch.save(model.sample(args.n).cpu(), out.with_suffix(".pt"))
    print(f"wrote {out}")


def cmd_compare(args):
    from .compare import compare

    train, test = load_split(args, "train"), load_split(args, "test")
    def model():  # called after compare() seeds: every objective starts from the same weights
        return build_model(args, train.x.shape[1:], _num_classes(train))

    out = compare(model, training_data(args, train), test, args.objectives, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                  seed=args.seed, device=args.device, eval_k=args.eval_k, run_dir=args.run_dir,
                  progress=not args.quiet, data_plate=args.data_plate,
                  ais=dict(steps=args.ais_steps, chains=args.ais_chains) if args.ais_steps else None)
    print(out["table"])
    print(f"run folder: {args.run_dir}")


def cmd_demo(args):
    """Default MLP VAE on the embedded Fashion-MNIST sample, binarized dynamically."""
    for key, value in dict(dataset=EMBEDDED, data_dir=None, binarize="dynamic", n_train=None, n_test=None,
                           latent_dim=50, hidden=[200, 200], activation="tanh", likelihood="bernoulli",
                           guide="diagonal", beta=1.0, net="mlp", likelihood_scale=None, objective="elbo",
                           model="vae", prior=None,
                           preset=None, inference="bottom-up", rank=None, flow_steps=None,
                           k=1, alpha=0.5, batch_size=100, lr=1e-3, warmup_epochs=0, resume=None, precision="fp32",
                           compile=False, clip_grad=None).items():
        setattr(args, key, value)
    if args.smoke:
        args.epochs, args.eval_k, args.n_train, args.n_test = 1, 10, 500, 100
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
    """Fixed width, so the generated reference does not depend on the terminal."""

    def __init__(self, prog):
        super().__init__(prog, width=100, max_help_position=32)


# -- the parser ---------------------------------------------------------------------------------
def _add_data_args(p, defaults=True):
    p.add_argument("--dataset", default=EMBEDDED if defaults else None,
                   help=f"dataset name ({EMBEDDED}, fashion-mnist, mnist, binarized-mnist) or a .npy/.npz path")
    p.add_argument("--data-dir", default=None, help="folder with the dataset's files (else $PVAE_DATA, Debian's, download)")
    p.add_argument("--binarize", choices=BINARIZE, default="none" if defaults else None,
                   help="binarization of grey images (dynamic: resampled every epoch)")
    p.add_argument("--n-test", type=int, default=None, help="use only the first N test datapoints")


def _add_common(p):
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
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
    p.add_argument("--latent-dim", type=int, default=50)
    p.add_argument("--hidden", type=int, nargs="+", default=[200, 200], help="hidden widths of the encoder")
    p.add_argument("--activation", choices=sorted(ACTIVATIONS), default="tanh")
    p.add_argument("--likelihood", choices=sorted(LIKELIHOODS), default="bernoulli")
    p.add_argument("--likelihood-scale", type=float, default=None, help="fixed sigma for --likelihood gaussian")
    p.add_argument("--guide", choices=sorted(GUIDES), default="diagonal")
    p.add_argument("--rank", type=int, default=None, help="rank of the lowrank guide (default 2)")
    p.add_argument("--flow-steps", type=int, default=None, help="IAF steps of the iaf guide (default 2)")
    p.add_argument("--net", choices=("mlp", "conv"), default="mlp")
    p.add_argument("--beta", type=float, default=1.0, help="weight of the KL term (beta-VAE)")
    p.add_argument("--prior", default=None, help="cvae: standard or learned (p(z|y)); ae: flat or normal")
    p.add_argument("--labels", type=int, default=100, help="m2: how many training labels are kept")
    p.add_argument("--visible", type=int, choices=(1, 2, 3), default=1, help="structured: visible quadrants")
    p.add_argument("--num-vars", type=int, default=20, help="gumbel: number of categorical latents")
    p.add_argument("--num-classes", type=int, default=10, help="gumbel: classes of each categorical latent")
    p.add_argument("--hard", action="store_true", help="gumbel: straight-through (one-hot forward pass)")
    p.add_argument("--noise", type=float, default=0.0, help="ae: masking probability of the denoising AE")
    p.add_argument("--num-codes", type=int, default=64, help="vqvae: codebook size (--latent-dim: code size)")


def _add_ais_args(p, many=False):
    if many:
        p.add_argument("--steps", type=int, nargs="+", default=[10, 100, 500], help="annealing steps (one run each)")
    else:
        p.add_argument("--steps", type=int, default=500, help="AIS annealing steps")
    p.add_argument("--chains", type=int, default=16, help="AIS chains per datapoint")
    p.add_argument("--leapfrog", type=int, default=10, help="leapfrog steps per HMC transition")


def _add_budget_args(p):
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-3)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="pvae", formatter_class=_Formatter, description="Variational autoencoders as Pyro model/guide pairs.")
    sub = ap.add_subparsers(dest="command", required=True, metavar="{train,eval,sample,apply,compare,demo}")

    t = sub.add_parser("train", formatter_class=_Formatter, help="train a VAE and evaluate it", description="Train a VAE by SVI, then "
                       "evaluate log p(x) with k importance samples; everything goes into --run-dir.")
    _add_data_args(t)
    t.add_argument("--n-train", type=int, default=None, help="use only the first N training datapoints")
    t.add_argument("--exclude-class", type=int, default=None,
                   help="leave this class out of training (then: pvae apply RUN --task anomaly)")
    _add_model_args(t)
    t.add_argument("--objective", default=None, metavar="SPEC",
                   help=f"objective name or spec such as iwae:k=50, renyi:k=5,alpha=0.5, miwae:k=64,M=8 "
                   f"(names: {', '.join(OBJECTIVES)}; default: elbo, enum-elbo for m2, mf-elbo for gumbel)")
    t.add_argument("--k", type=int, default=1, help="particles (importance samples) per datapoint in training")
    t.add_argument("--alpha", type=float, default=0.5, help="alpha of the renyi objective")
    _add_budget_args(t)
    t.add_argument("--warmup-epochs", type=float, default=0, help="epochs of linear KL warm-up")
    t.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                   help="arithmetic of the nets (log-densities stay float32)")
    t.add_argument("--compile", action="store_true", help="torch.compile the nets")
    t.add_argument("--clip-grad", type=float, default=None, help="clip the gradients' global norm")
    t.add_argument("--eval-k", type=int, default=5000, help="importance samples for test log p(x) (0: skip)")
    t.add_argument("--run-dir", default="runs/train")
    t.add_argument("--resume", default=None, help="run folder or checkpoint to continue from")
    _add_common(t)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", formatter_class=_Formatter, help="evaluate a trained run", description="Importance-sampled test log p(x), "
                       "ELBO terms, active units and PSIS k-hat of a run; writes results.json and figures.")
    e.add_argument("run", help="run folder or checkpoint")
    _add_data_args(e, defaults=False)
    e.add_argument("--k", type=int, default=5000, help="importance samples per datapoint")
    e.add_argument("--method", choices=("is", "ais"), default="is",
                   help="ais: also annealed importance sampling (HMC transitions), reported next to IS")
    _add_ais_args(e)
    _add_common(e)
    e.set_defaults(func=cmd_eval)

    b = sub.add_parser("bdmc", formatter_class=_Formatter, help="bidirectional Monte Carlo on simulated data",
                       description="Simulate --n datapoints from a run's model, run forward AIS (a stochastic lower "
                       "bound on log p(x)) and reverse AIS from the exact latents (an upper bound) for each --steps "
                       "value; writes bdmc.json and a table of the gap per number of steps.")
    b.add_argument("run", help="run folder or checkpoint")
    b.add_argument("--n", type=int, default=100, help="simulated datapoints")
    _add_ais_args(b, many=True)
    _add_common(b)
    b.set_defaults(func=cmd_bdmc)

    s = sub.add_parser("sample", formatter_class=_Formatter, help="draw samples from a trained model", description="Decode z ~ p(z) to an image grid.")
    s.add_argument("run", help="run folder or checkpoint")
    s.add_argument("--n", type=int, default=64)
    s.add_argument("--out", default=None, help="PNG path (default: RUN/samples.png)")
    s.add_argument("--save-tensor", action="store_true", help="also save the samples as a .pt tensor")
    _add_common(s)
    s.set_defaults(func=cmd_sample)

    a = sub.add_parser("apply", formatter_class=_Formatter, help="anomaly detection, denoising or inpainting",
                       description="Use a trained run on its test data: --task anomaly scores -log p(x) and "
                       "reports the AUROC of --anomaly-class (train with --exclude-class); denoise reconstructs "
                       "corrupted images; inpaint fills in the bottom half from the top. Writes TASK.json and "
                       "TASK.png into the run folder.")
    a.add_argument("run", help="run folder or checkpoint")
    a.add_argument("--task", choices=("anomaly", "denoise", "inpaint"), required=True)
    a.add_argument("--anomaly-class", type=int, default=None, help="anomaly: the class that counts as anomalous")
    a.add_argument("--k", type=int, default=1000, help="importance samples (anomaly, inpaint)")
    a.add_argument("--noise", type=float, default=0.5, help="denoise: corruption strength")
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
    c.add_argument("--n-train", type=int, default=None, help="use only the first N training datapoints")
    _add_model_args(c)
    c.add_argument("--objectives", nargs="+", default=["elbo", "iwae:k=5"], metavar="SPEC",
                   help="objective specs, e.g. elbo mf-elbo iwae:k=5 iwae:k=50 iwae-dreg:k=50 renyi:k=5,alpha=0.5")
    _add_budget_args(c)
    c.add_argument("--eval-k", type=int, default=5000, help="importance samples for test log p(x)")
    c.add_argument("--ais-steps", type=int, default=0, help="also AIS log p(x) with this many steps (0: none)")
    c.add_argument("--ais-chains", type=int, default=16, help="AIS chains per datapoint")
    c.add_argument("--run-dir", default="runs/compare")
    _add_common(c)
    c.set_defaults(func=cmd_compare)

    d = sub.add_parser("demo", formatter_class=_Formatter, help="the main job: a VAE on the embedded Fashion-MNIST sample",
                       description="Train the default MLP VAE (784-200-200-50, tanh, Bernoulli) on the embedded "
                       "Fashion-MNIST sample (5,000 train / 1,000 test, dynamically binarized), evaluate test "
                       "log p(x) with k = 5000, and print a results table.")
    d.add_argument("--epochs", type=int, default=30)
    d.add_argument("--eval-k", type=int, default=5000)
    d.add_argument("--run-dir", default="runs/demo")
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


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, TypeError, FileNotFoundError, FloatingPointError) as e:
        print(f"pvae: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pvae: interrupted; the last checkpoint is kept", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    if sys.argv[1:] == ["--markdown"]:
        print(markdown_reference(), end="")
        sys.exit(0)
    sys.exit(main())
