"""The ``pvae`` command: ``pvae train | eval | sample | demo``, each with ``--help``.

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
def load_split(args, split):
    n = args.n_train if split == "train" else args.n_test
    return load_dataset(args.dataset, split, data_dir=args.data_dir, binarize=args.binarize, n=n)


def report(model, test, run_dir: Path, k: int, history=None, progress=True, seed: int = 0) -> dict:
    """Evaluate ``model`` on ``test``, draw the figures, write results.json and summary.md."""
    import torch

    from . import plots
    from .checkpoint import write_text
    from .evaluate import evaluate

    torch.manual_seed(seed)
    t0 = time.perf_counter()
    res = evaluate(model, test, k=k, progress=progress)
    s = dict(res["summary"], eval_seconds=time.perf_counter() - t0)
    x = test.eval_x().reshape((len(test),) + tuple(model.x_shape))
    plots.reconstructions(model, x, path=run_dir / "reconstructions.png")
    plots.samples(model, path=run_dir / "samples.png")
    plots.latent_space(model, x, test.y, path=run_dir / "latent_space.png")
    plots.interpolation(model, x[0], x[1], path=run_dir / "interpolation.png")
    if "khat" in res:
        plots.khat_histogram(res["khat"], path=run_dir / "khat.png")
    if history:
        plots.training_curves(history, path=run_dir / "training_curves.png")
        s["train_seconds"] = sum(r["seconds"] for r in history)
        s["epochs"] = history[-1]["epoch"]
    write_text(run_dir / "results.json", json.dumps(s, indent=1))
    write_text(run_dir / "summary.md", summary_markdown(s, run_dir))
    return s


ROWS = [("log_px", "test log p(x) (nats, importance-sampled)"), ("elbo", "test ELBO"),
        ("recon", "  reconstruction E_q[log p(x|z)]"), ("kl", "  KL(q(z|x) || p(z))"),
        ("active_units", "active units (Cov_x E_q[u] > 0.01)"), ("ess", "importance-sampling ESS"),
        ("khat_median", "PSIS k-hat, median"), ("khat_max", "PSIS k-hat, max"),
        ("khat_gt_0_7", "share of k-hat > 0.7"), ("train_seconds", "training seconds"),
        ("eval_seconds", "evaluation seconds")]


def results_table(s: dict) -> str:
    lines = ["| quantity | value |", "|---|---|"]
    for key, label in ROWS:
        if key in s:
            v = s[key]
            lines.append(f"| {label} | {v if isinstance(v, int) else f'{v:.3f}'} |")
    return "\n".join(lines)


def summary_markdown(s: dict, run_dir: Path) -> str:
    figs = [f for f in ("reconstructions", "samples", "latent_space", "interpolation", "training_curves", "khat")
            if (run_dir / f"{f}.png").exists()]
    return (f"# pvae run `{run_dir.name}`\n\n{s['n']} test datapoints, k = {s['k']} importance samples.\n\n"
            + results_table(s) + "\n\n" + "\n".join(f"![{f}]({f}.png)" for f in figs) + "\n")


def build_model(args, x_shape):
    from .models import VAE
    from .presets import PRESETS, preset

    options = dict(rank=args.rank, flow_steps=args.flow_steps)
    if args.preset:
        if args.preset not in PRESETS:
            raise ValueError(f"unknown preset {args.preset!r}; choose one of {sorted(PRESETS)}")
        extra = {"inference": args.inference} if "latent_dims" in PRESETS[args.preset][1] else {}
        return preset(args.preset, guide=args.guide, beta=args.beta, **options, **extra)

    shape = tuple(x_shape) if args.net == "conv" else (math.prod(x_shape),)
    if args.net == "conv" and len(shape) == 2:  # (H, W) grey images: one channel
        shape = (1,) + shape
    return VAE(x_shape=shape, latent_dim=args.latent_dim, hidden=tuple(args.hidden), activation=args.activation,
               likelihood=args.likelihood, guide=args.guide, beta=args.beta, net=args.net,
               likelihood_scale=args.likelihood_scale, **options)


def cmd_train(args):
    from .checkpoint import write_text
    from .train import fit

    train, test = load_split(args, "train"), load_split(args, "test")
    model = build_model(args, train.x.shape[1:])
    if args.resume:
        from .checkpoint import load

        model = load(args.resume)
    run_dir = Path(args.run_dir)
    h = fit(model, train, objective=args.objective, k=args.k, alpha=args.alpha, epochs=args.epochs,
            batch_size=args.batch_size, lr=args.lr, seed=args.seed, device=args.device, test=test,
            warmup_epochs=args.warmup_epochs, run_dir=run_dir, resume=args.resume, progress=not args.quiet,
            precision=args.precision, compile=args.compile, clip_grad=args.clip_grad)
    data = {k: getattr(args, k) for k in ("dataset", "data_dir", "binarize", "n_test")}
    if int(os.environ.get("RANK", "0")) != 0:
        return  # under torchrun: rank 0 evaluates and writes the run's files
    write_text(run_dir / "data.json", json.dumps(data, indent=1))
    if args.eval_k > 0:
        s = report(h.model, test, run_dir, args.eval_k, history=h, progress=not args.quiet, seed=args.seed)
        print(results_table(s))
    print(f"run folder: {run_dir}")


def _run_data(run_dir: Path, args):
    saved = json.loads((run_dir / "data.json").read_text()) if (run_dir / "data.json").exists() else {}
    for key in ("dataset", "data_dir", "binarize", "n_test"):
        if getattr(args, key, None) is None:
            setattr(args, key, saved.get(key, {"dataset": EMBEDDED, "binarize": "none"}.get(key)))
    args.n_train = None
    return load_split(args, "test")


def cmd_eval(args):
    from .checkpoint import load

    run_dir = Path(args.run)
    run_dir = run_dir if run_dir.is_dir() else run_dir.parent
    model = load(args.run, map_location=args.device)
    test = _run_data(run_dir, args)
    hist = json.loads((run_dir / "history.json").read_text()) if (run_dir / "history.json").exists() else None
    s = report(model, test, run_dir, args.k, history=hist, progress=not args.quiet, seed=args.seed)
    print(results_table(s))


def cmd_sample(args):
    import torch

    from . import plots
    from .checkpoint import load

    model = load(args.run, map_location=args.device)
    out = Path(args.out) if args.out else (Path(args.run) if Path(args.run).is_dir() else Path(args.run).parent) / "samples.png"
    plots.samples(model, n=args.n, path=out, seed=args.seed)
    if args.save_tensor:
        torch.manual_seed(args.seed)
        torch.save(model.sample(args.n).cpu(), out.with_suffix(".pt"))
    print(f"wrote {out}")


def cmd_compare(args):
    from .compare import compare

    train, test = load_split(args, "train"), load_split(args, "test")
    def model():  # called after compare() seeds: every objective starts from the same weights
        return build_model(args, train.x.shape[1:])

    out = compare(model, train, test, args.objectives, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                  seed=args.seed, device=args.device, eval_k=args.eval_k, run_dir=args.run_dir,
                  progress=not args.quiet)
    print(out["table"])
    print(f"run folder: {args.run_dir}")


def cmd_demo(args):
    """Default MLP VAE on the embedded Fashion-MNIST sample, binarized dynamically."""
    for key, value in dict(dataset=EMBEDDED, data_dir=None, binarize="dynamic", n_train=None, n_test=None,
                           latent_dim=50, hidden=[200, 200], activation="tanh", likelihood="bernoulli",
                           guide="diagonal", beta=1.0, net="mlp", likelihood_scale=None, objective="elbo",
                           preset=None, inference="bottom-up", rank=None, flow_steps=None,
                           k=1, alpha=0.5, batch_size=100, lr=1e-3, warmup_epochs=0, resume=None, precision="fp32",
                           compile=False, clip_grad=None).items():
        setattr(args, key, value)
    if args.smoke:
        args.epochs, args.eval_k, args.n_train, args.n_test = 1, 10, 500, 100
    t0 = time.perf_counter()
    cmd_train(args)
    print(f"demo wall time: {time.perf_counter() - t0:.1f} s")


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


def _add_model_args(p):
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


def _add_budget_args(p):
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-3)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="pvae", formatter_class=_Formatter, description="Variational autoencoders as Pyro model/guide pairs.")
    sub = ap.add_subparsers(dest="command", required=True, metavar="{train,eval,sample,compare,demo}")

    t = sub.add_parser("train", formatter_class=_Formatter, help="train a VAE and evaluate it", description="Train a VAE by SVI, then "
                       "evaluate log p(x) with k importance samples; everything goes into --run-dir.")
    _add_data_args(t)
    t.add_argument("--n-train", type=int, default=None, help="use only the first N training datapoints")
    _add_model_args(t)
    t.add_argument("--objective", default="elbo", metavar="SPEC",
                   help=f"objective name or spec such as iwae:k=50, renyi:k=5,alpha=0.5, miwae:k=64,M=8 "
                   f"(names: {', '.join(OBJECTIVES)})")
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
    _add_common(e)
    e.set_defaults(func=cmd_eval)

    s = sub.add_parser("sample", formatter_class=_Formatter, help="draw samples from a trained model", description="Decode z ~ p(z) to an image grid.")
    s.add_argument("run", help="run folder or checkpoint")
    s.add_argument("--n", type=int, default=64)
    s.add_argument("--out", default=None, help="PNG path (default: RUN/samples.png)")
    s.add_argument("--save-tensor", action="store_true", help="also save the samples as a .pt tensor")
    _add_common(s)
    s.set_defaults(func=cmd_sample)

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
