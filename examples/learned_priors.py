"""Learned priors against N(0, I) at an equal budget: test log p(x), aggregate-posterior KL, samples.

Trains the IWAE paper's one-layer VAE (784-200-200-50, tanh, Bernoulli, dynamic binarization)
with each prior family for the same epochs, batch and learning rate, then reports test log p(x)
(k importance samples, with its standard error), the ELBO, KL(q(z) || p(z)) of the aggregate
posterior, and draws a sample grid per prior.

    python examples/learned_priors.py                                   # embedded sample, 20 epochs
    python examples/learned_priors.py --dataset fashion-mnist --epochs 10 --n-test 1000
"""

import argparse
import json
import time
from pathlib import Path

import torch

import pvae
from pvae.infer.importance import standard_error


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="fashion-mnist-sample")
    ap.add_argument("--priors", nargs="+", default=["standard", "mog", "vamp", "flow"])
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--objective", default="elbo")
    ap.add_argument("--k", type=int, default=5000, help="importance samples for test log p(x)")
    ap.add_argument("--n-test", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/learned-priors")
    ap.add_argument("--smoke", action="store_true", help="a seconds-long run (the tests use it)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.epochs, args.k, args.n_test = 1, 10, 50
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train = pvae.load_dataset(args.dataset, "train", binarize="dynamic", n=500 if args.smoke else None)
    test = pvae.load_dataset(args.dataset, "test", binarize="dynamic", n=args.n_test)
    rows, per_datapoint = [], {}
    for prior in args.priors:
        torch.manual_seed(args.seed)
        m = pvae.VAE(x_shape=(1, 28, 28), latent_dim=50, hidden=(200, 200), activation="tanh", prior=prior)
        t0 = time.perf_counter()
        pvae.fit(m, train, objective=args.objective, epochs=args.epochs, batch_size=100, lr=1e-3, seed=args.seed,
                 progress=False)
        seconds = time.perf_counter() - t0
        torch.manual_seed(args.seed)
        res = pvae.evaluate(m, test, k=args.k, khat=False, progress=False)
        per_datapoint[prior] = res["log_px"]
        first = per_datapoint[args.priors[0]]  # paired with the first prior: the same test images
        rows.append({"prior": prior, "log_px": float(res["log_px"].mean()), "log_px_se": standard_error(res["log_px"]),
                     "minus_first": float((res["log_px"] - first).mean()),
                     "minus_first_se": standard_error(res["log_px"] - first),
                     "elbo": res["summary"]["elbo"], "kl": res["summary"]["kl"],
                     "aggregate_kl": pvae.aggregate_kl(m, test), "active_units": res["summary"]["active_units"],
                     "train_seconds": seconds})
        pvae.plots.samples(m, n=64, path=out / f"samples_{prior}.png")
        print(json.dumps(rows[-1]))
    lines = [f"| prior | test log p(x) | minus {args.priors[0]} (paired) | ELBO | KL(q(z\\|x) \\|\\| p(z)) | "
             "aggregate KL(q(z) \\|\\| p(z)) | active units | train s |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['prior']} | {r['log_px']:.2f} ± {r['log_px_se']:.2f} | {r['minus_first']:+.2f} ± "
              f"{r['minus_first_se']:.2f} | {r['elbo']:.2f} | {r['kl']:.2f} | {r['aggregate_kl']:.2f} | "
              f"{r['active_units']} | {r['train_seconds']:.0f} |" for r in rows]
    table = "\n".join(lines)
    (out / "priors.md").write_text(f"{args.dataset}, {args.epochs} epochs of {args.objective}, test log p(x) with "
                                   f"k = {args.k} on {len(test)} test images.\n\n{table}\n")
    (out / "priors.json").write_text(json.dumps(rows, indent=1))
    print(table)


if __name__ == "__main__":
    main()
