"""What the commands share: the data a run trains on, the model the options build, and the
settings a resumed run takes from the run it continues."""

from __future__ import annotations

import math
from pathlib import Path

from pvae.data.datasets import EMBEDDED, load_dataset
from pvae.training.settings import RESUMED


# -- the work, shared by the commands -----------------------------------------------------------
class Members(dict):
    """Several arrays per datapoint (an .npz with arrays besides x and y), by name, x first: they
    reach a program of your own as keyword arguments (see [`pvae.infer.inputs`][pvae.infer.inputs])."""

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
    from pvae.data.datasets import read_arrays

    arrays = read_arrays(path)
    prefixed = {k[len(split) + 1:]: v for k, v in arrays.items() if k.startswith(f"{split}_")}
    arrays = prefixed or {k: v for k, v in arrays.items() if not k.startswith(("train_", "test_"))}
    if "x" not in arrays or not set(arrays) - {"x", "y"}:
        return None
    from pvae.data.datasets import _to_float

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
    from pvae import models
    from pvae.models.presets import PRESETS, preset

    if own_program(args):
        from pvae.infer.pair import load_program

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
    from pvae.data.datasets import semi_supervised

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
FIT_OPTIONS = {key: key for key in RESUMED}  # the settings a resumed run keeps (pvae.training.settings)
DATA_OPTIONS = ("dataset", "binarize", "n_train", "n_test", "exclude_class")


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def resume_settings(args) -> None:
    """``--resume RUN``: the run continues as it was configured. Options the user did not give
    are taken from the run; an option given with another value than the run's is an error."""
    from pvae.training.checkpoint import load_checkpoint, resolve
    from pvae.util.files import read_json

    state = load_checkpoint(args.resume)
    given, folder = getattr(args, "_given", set()), resolve(args.resume).parent
    saved_fit, saved_model = state["fit_config"], state["config"] or {}
    data = read_json(folder / "data.json") if (folder / "data.json").exists() else {}
    if data.get("program"):  # a program of the user's own: resumed only with that program, named again
        check_program(args, data, folder)
    elif own_program(args):
        raise ValueError(f"--model {args.model} conflicts with the run in {folder}, a {state['model_class']} of pvae's "
                         "own; resuming continues that run (start a new run to change it)")
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
    if "eval_k" not in given and data.get("eval_k") is not None and hasattr(args, "eval_k"):
        args.eval_k = data["eval_k"]  # the run's own evaluation budget, unless one is given
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


def _open_run(args):
    """``args.run`` (a run folder or a checkpoint in one) -> (the run folder, the trained model)."""
    from pvae.training.checkpoint import load
    from pvae.util.files import read_json

    if not str(args.run).strip():
        raise ValueError("the run must name a run folder or checkpoint, got an empty string")
    run_dir = Path(args.run)
    run_dir = run_dir if run_dir.is_dir() else run_dir.parent
    saved = read_json(run_dir / "data.json") if (run_dir / "data.json").exists() else {}
    if saved.get("program"):  # a program of the user's own: the user names it, pvae checks it, then loads the run
        from pvae.infer.pair import load_program

        check_program(args, saved, run_dir)
        model = load(args.run, model=load_program(args.model), map_location=args.device)
        model._pvae_data_plate = saved.get("data_plate")
        return run_dir, model
    if getattr(args, "model", None):
        raise ValueError(f"--model {args.model}: the run in {run_dir} trained pvae's own {saved.get('model_class') or 'model'}, "
                         "not a program of yours; leave --model out")
    return run_dir, load(args.run, map_location=args.device)


def check_program(args, saved: dict, run_dir) -> None:
    """A run of the user's own program is used only with the program named again (``--model``),
    and only if its source is the one the run recorded (or ``--accept-program-change``): pvae
    never imports code because a run folder names it."""
    from pvae.infer.pair import program_fingerprint

    if not getattr(args, "model", None) or args.model == "vae":
        raise ValueError(f"the run in {run_dir} trained a program of your own ({saved['program']}), and pvae does not "
                         f"import code that a run folder names: pass --model FILE.py:NAME, the program it trained")
    recorded, given = saved.get("program_sha256"), program_fingerprint(args.model)
    if recorded and given != recorded and not getattr(args, "accept_program_change", False):
        raise ValueError(f"--model {args.model} is not the program the run in {run_dir} trained ({saved['program']}): "
                         "its source differs from the recorded one; pass that program, or add "
                         "--accept-program-change to use this one")


def _run_data(run_dir: Path, args, split: str = "test"):
    """The run's test (or training) data, as data.json recorded them."""
    from pvae.util.files import read_json

    saved = read_json(run_dir / "data.json") if (run_dir / "data.json").exists() else {}
    for key in ("dataset", "data_dir", "binarize", "n_test", "n_train", "exclude_class"):
        if getattr(args, key, None) is None:
            setattr(args, key, saved.get(key, {"dataset": EMBEDDED, "binarize": "none"}.get(key)))
    if split == "test":
        args.n_train = None
    args.model = getattr(args, "model", None) or saved.get("program") or "vae"  # (only read: own_program(args))
    return load_split(args, split)


def output_path(out, default, also=()) -> Path:
    """Where a command other than ``train`` writes a file: ``--out`` as given, refused where it (or
    its sibling with a suffix in ``also``) exists; else ``default``, versioned (``-2``, ``-3`` ...)
    past what exists. Such commands write new files only: never a run's files or a user's."""
    from pvae.util.files import new_path, taken

    if out is None:
        return new_path(default, also)
    if not str(out).strip():
        raise ValueError("--out must name a file, got an empty string")
    there = taken(out, also)
    if there is not None:
        raise ValueError(f"--out {out}: {there} exists, and this command writes new files only (it never replaces a "
                         "run's file or yours): choose another name")
    suffix = Path(out).suffix.lstrip(".").lower()
    formats = _image_formats()
    if suffix not in formats:
        raise ValueError(f"--out {out}: the figure's format comes from its suffix, and "
                         f"{'.' + suffix if suffix else 'no suffix'} is not one matplotlib writes; use .png, .pdf or .svg")
    return Path(out)


def _image_formats() -> set:
    from matplotlib.backend_bases import FigureCanvasBase

    return set(FigureCanvasBase.get_supported_filetypes())


def compile_option(args):
    """fit's ``compile`` from ``--compile`` (the nets) and ``--compile-step auto|on|off``."""
    if getattr(args, "compile", False):
        return True
    return {"on": "step", "off": False}.get(getattr(args, "compile_step", "auto"), "auto")
