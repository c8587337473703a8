"""A two-stochastic-layer VAE (the IWAE paper's 784-(200-200)-100-(100-100)-50), bottom-up or
ladder inference, trained by the ELBO or an importance-weighted bound.

    python examples/hierarchical_vae.py --inference ladder --objective iwae:k=5
    python examples/hierarchical_vae.py --smoke
"""

import argparse

import pvae
from pvae import plots

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--dataset", default="fashion-mnist")
ap.add_argument("--inference", choices=("bottom-up", "ladder"), default="bottom-up")
ap.add_argument("--objective", default="elbo")
ap.add_argument("--epochs", type=int, default=10)
ap.add_argument("--eval-k", type=int, default=5000)
ap.add_argument("--out", default="runs/hierarchical")
ap.add_argument("--smoke", action="store_true")
args = ap.parse_args()
n_train, n_test = None, 1000
if args.smoke:
    args.dataset, args.epochs, args.eval_k, n_train, n_test = "fashion-mnist-sample", 1, 10, 500, 50

train = pvae.load_dataset(args.dataset, "train", binarize="dynamic", n=n_train)
test = pvae.load_dataset(args.dataset, "test", binarize="dynamic", n=n_test)

# p(z2) p(z1|z2) p(x|z1); q(z1|x) q(z2|z1) (bottom-up) or q(z2|x) q(z1|z2,x) (ladder)
m = pvae.preset("iwae-2layer", inference=args.inference)
h = pvae.fit(m, train, objective=args.objective, epochs=args.epochs, test=test, run_dir=args.out,
             progress=not args.smoke)
r = pvae.evaluate(m, test, k=args.eval_k, progress=False)
s = r["summary"]
au = pvae.active_units(m, test)["variances"]
print(f"test log p(x) = {s['log_px']:.2f} nats (k={args.eval_k}), ELBO = {s['elbo']:.2f}; active units: "
      + ", ".join(f"{site}: {int((v > 0.01).sum())}/{v.numel()}" for site, v in sorted(au.items())))
x = test.eval_x().reshape(-1, 784)
plots.samples(m, path=f"{args.out}/samples.png")
plots.reconstructions(m, x, path=f"{args.out}/reconstructions.png")
