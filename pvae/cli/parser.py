"""The ``pvae`` command's parser: every command, its options and their types (a bad value is
one line from argparse, exit 2)."""

from __future__ import annotations

import argparse
import math

from pvae.cli.apply import cmd_apply
from pvae.cli.bdmc import cmd_bdmc
from pvae.cli.common import MODEL_CHOICES
from pvae.cli.compare import cmd_compare
from pvae.cli.demo import cmd_demo
from pvae.cli.evaluate import cmd_eval
from pvae.cli.sample import cmd_sample
from pvae.cli.train import cmd_train
from pvae.data.datasets import BINARIZE, EMBEDDED
from pvae.infer.objectives import OBJECTIVES
from pvae.nn.guides import GUIDES
from pvae.nn.likelihoods import LIKELIHOODS
from pvae.nn.nets import ACTIVATIONS


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
def _keywords(value: str) -> dict:
    """``k=v,k=v`` as keyword arguments; each value read as JSON where it parses (0.9, true, [0.9, 0.99])."""
    import json

    out = {}
    for part in filter(None, (p.strip() for p in _split_top(value))):
        key, eq, raw = part.partition("=")
        if not eq or not key.strip().isidentifier():
            raise argparse.ArgumentTypeError(f"{part!r} is not KEY=VALUE (e.g. momentum=0.9)")
        try:
            out[key.strip()] = json.loads(raw)
        except ValueError:
            out[key.strip()] = raw.strip()
    return out


def _split_top(value: str) -> list:
    """Split at commas outside brackets (betas=[0.9,0.99] stays one part)."""
    parts, depth, cur = [], 0, ""
    for ch in value:
        depth += ch in "[(" and 1 or (-1 if ch in "])" else 0)
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return parts + [cur]


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
        p.add_argument("--steps", type=_integer(2), nargs="+", default=[10, 100, 1800],
                       help="annealing steps (one run each)")
    else:
        p.add_argument("--steps", type=_integer(2), default=1800, help="AIS annealing steps")
    p.add_argument("--chains", type=POSITIVE, default=16, help="AIS chains per datapoint")
    p.add_argument("--leapfrog", type=POSITIVE, default=2, help="leapfrog steps per HMC transition")


def _add_program_args(p):
    p.add_argument("--model", default=None, metavar="FILE.py:NAME",
                   help="the program of your own that the run trained (pvae never imports code a run folder names: "
                        "you name it, and it is checked against the run's record)")
    p.add_argument("--accept-program-change", action="store_true",
                   help="use --model even though its source differs from the one the run trained")


def _add_run_args(p, kind):
    p.add_argument("--run-dir", default=None, help=f"the run folder (default: a new runs/{kind}-DATE-TIME)")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in --run-dir")
    p.set_defaults(kind=kind)


def _add_budget_args(p):
    p.add_argument("--epochs", type=NATURAL, default=10, help="passes over the training data")
    p.add_argument("--batch-size", type=POSITIVE, default=100, help="datapoints per step")
    p.add_argument("--lr", type=_real(0, open_low=True), default=1e-3, help="Adam's learning rate")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pyro-vae")
    except PackageNotFoundError:  # run from a source tree that was not installed
        import pvae

        return pvae.__version__


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="pvae", formatter_class=_Formatter, description="Variational autoencoders as Pyro model/guide pairs.")
    ap.add_argument("--version", action="version", version=f"pvae {_version()}")
    sub = ap.add_subparsers(dest="command", required=True)

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
    t.add_argument("--optimizer", default="adam", metavar="NAME",
                   help="adam (default), or any torch.optim class by name: adamw, sgd, rmsprop, ...")
    t.add_argument("--optimizer-args", type=_keywords, default=None, metavar="K=V,...",
                   help="the optimizer's arguments, e.g. momentum=0.9,nesterov=true (lr is --lr)")
    t.add_argument("--scheduler", default=None, metavar="NAME",
                   help="learning-rate schedule stepped every epoch: cosine, step, exponential, plateau, or a "
                        "torch.optim.lr_scheduler class name")
    t.add_argument("--scheduler-args", type=_keywords, default=None, metavar="K=V,...",
                   help="the schedule's arguments, e.g. step_size=5,gamma=0.5")
    t.add_argument("--validation", type=_real(0, open_low=True, high=1), default=None, metavar="FRACTION",
                   help="hold out this fraction of the training data: its ELBO picks best.pt and drives "
                        "--early-stopping and the plateau schedule")
    t.add_argument("--early-stopping", type=POSITIVE, default=None, metavar="EPOCHS",
                   help="stop when the validation (else test) ELBO has not improved for this many epochs")
    t.add_argument("--eval-k", type=NATURAL, default=5000, help="importance samples for test log p(x) (0: skip)")
    _add_run_args(t, "train")
    t.add_argument("--accept-program-change", action="store_true",
                   help="resume a run of your own program with a --model whose source has changed since")
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
    _add_program_args(e)
    e.set_defaults(func=cmd_eval)

    b = sub.add_parser("bdmc", formatter_class=_Formatter, help="bidirectional Monte Carlo on simulated data",
                       description="Simulate --n datapoints from a run's model, run forward AIS (a stochastic lower "
                       "bound on log p(x)) and reverse AIS from the exact latents (an upper bound) for each --steps "
                       "value; writes bdmc.json and a table of the gap per number of steps.")
    b.add_argument("run", help="run folder or checkpoint")
    b.add_argument("--n", type=POSITIVE, default=100, help="simulated datapoints")
    _add_ais_args(b, many=True)
    _add_common(b)
    _add_program_args(b)
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
    _add_program_args(s)
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
    _add_program_args(a)
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
    c.add_argument("--ais-leapfrog", type=POSITIVE, default=2, help="AIS leapfrog steps per HMC transition")
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
    sub.metavar = "{" + ",".join(sub.choices) + "}"  # the usage line names every command
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


#: the options whose size a memory error is about, per command
SIZES = {"train": ("k", "batch_size", "latent_dim", "hidden"), "compare": ("batch_size", "latent_dim", "hidden", "eval_k"),
         "eval": ("k",), "sample": ("n",), "apply": ("k",), "bdmc": ("n", "chains"), "demo": ("eval_k",)}
