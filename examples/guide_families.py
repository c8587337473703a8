"""Richer guides on the IWAE paper's one-layer VAE: diagonal, full-covariance, low-rank and IAF,
trained with the same budget and evaluated with the same k.

    python examples/guide_families.py                 # full Fashion-MNIST, 10 epochs each
    python examples/guide_families.py --smoke         # the embedded sample, seconds
"""

import argparse

import torch

import pvae

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--dataset", default="fashion-mnist")
ap.add_argument("--epochs", type=int, default=10)
ap.add_argument("--objective", default="elbo")
ap.add_argument("--eval-k", type=int, default=5000)
ap.add_argument("--smoke", action="store_true")
args = ap.parse_args()
n_train, n_test = None, 1000
if args.smoke:
    args.dataset, args.epochs, args.eval_k, n_train, n_test = "fashion-mnist-sample", 1, 10, 500, 50

train = pvae.load_dataset(args.dataset, "train", binarize="dynamic", n=n_train)
test = pvae.load_dataset(args.dataset, "test", binarize="dynamic", n=n_test)

rows = []
for guide in ("diagonal", "fullcov", "lowrank", "iaf"):
    torch.manual_seed(0)
    m = pvae.preset("iwae-1layer", guide=guide)  # 784-200-200-50, tanh, Bernoulli
    h = pvae.fit(m, train, objective=args.objective, epochs=args.epochs, seed=0, test=test, progress=not args.smoke)
    torch.manual_seed(0)
    s = pvae.evaluate(m, test, k=args.eval_k, progress=False)["summary"]
    rows.append((guide, s["log_px"], s["elbo"], s["active_units"], sum(r["seconds"] for r in h)))

print("| guide | test log p(x) | test ELBO | active units | train s |\n|---|---|---|---|---|")
for guide, ll, elbo, au, sec in rows:
    print(f"| {guide} | {ll:.2f} | {elbo:.2f} | {au} | {sec:.0f} |")
