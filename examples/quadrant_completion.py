"""Structured output prediction (Sohn et al. 2015; Pyro's CVAE tutorial): predict the hidden
quadrants of an image from the visible ones, with a conditional VAE and with the deterministic
baseline network, and compare their test conditional log-likelihood log p(hidden | visible)
(importance sampling with k draws for the CVAE; exact for the baseline).

    python examples/quadrant_completion.py --dataset fashion-mnist --epochs 20
    python examples/quadrant_completion.py --smoke
"""

import argparse
import time

import torch

import pvae
from pvae import plots

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--dataset", default="fashion-mnist-sample")
ap.add_argument("--epochs", type=int, default=20)
ap.add_argument("--latent-dim", type=int, default=32)
ap.add_argument("--hidden", type=int, nargs="+", default=[500, 500])
ap.add_argument("--quadrants", type=int, nargs="+", default=[1, 2, 3], help="how many quadrants are visible")
ap.add_argument("--n-test", type=int, default=1000)
ap.add_argument("--k", type=int, default=5000, help="importance samples per test image")
ap.add_argument("--out", default="quadrant_completion.png")
ap.add_argument("--smoke", action="store_true")
args = ap.parse_args()
if args.smoke:
    args.epochs, args.k, args.n_test, args.hidden, args.quadrants = 1, 20, 100, [64], [1]

train = pvae.load_dataset(args.dataset, "train", binarize="dynamic", n=1000 if args.smoke else None)
test = pvae.load_dataset(args.dataset, "test", binarize="dynamic", n=args.n_test)
rows, figure = [], []
for q in args.quadrants:
    result = {}
    for name, D in (("baseline", 0), ("cvae", args.latent_dim)):
        torch.manual_seed(0)
        m = pvae.StructuredCVAE(visible=q, latent_dim=D, hidden=args.hidden)
        t0 = time.perf_counter()
        pvae.fit(m, train, "elbo", epochs=args.epochs, progress=not args.smoke)
        seconds = time.perf_counter() - t0
        ll = pvae.log_likelihood(m, test, k=args.k if D else 1, progress=not args.smoke)  # the baseline's log p(h|v) is exact
        result[name] = float(ll.mean())
        rows.append((q, name, seconds, -float(ll.mean())))
        print(f"{q} visible quadrant(s), {name:8s}: test -log p(hidden | visible) = {-float(ll.mean()):.2f} nats "
              f"(trained {seconds:.0f}s)", flush=True)
        figure.append((f"{q}q {name}", m.complete(test.eval_x()[:10], num_samples=1)[0]))
    print(f"{q} visible quadrant(s): the CVAE gains {result['cvae'] - result['baseline']:.2f} nats per image over "
          "the baseline")

x = test.eval_x()[:10]
mask = pvae.StructuredCVAE(visible=args.quadrants[0], latent_dim=0, hidden=[1]).visible_mask
plots.image_grid([x.reshape(10, -1), x.reshape(10, -1) * mask] + [img.reshape(10, -1) for _, img in figure],
                 path=args.out, titles=["truth", f"input ({args.quadrants[0]}q)"] + [t for t, _ in figure])
print(f"wrote {args.out}")
print("\n| visible quadrants | model | train s | test -log p(hidden given visible) |\n|---|---|---|---|")
for q, name, s, nll in rows:
    print(f"| {q} | {name} | {s:.0f} | {nll:.2f} |")
