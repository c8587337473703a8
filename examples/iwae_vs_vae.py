"""IWAE against the VAE: the same network trained under the ELBO and the k-sample bound, compared
with one evaluator (test log p(x) with k importance samples, active units, PSIS k-hat).

    python examples/iwae_vs_vae.py                   # full Fashion-MNIST, 10 epochs each
    python examples/iwae_vs_vae.py --smoke           # the embedded sample, seconds
"""

import argparse

import pvae

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--dataset", default="fashion-mnist")
ap.add_argument("--epochs", type=int, default=10)
ap.add_argument("--objectives", nargs="+", default=["elbo", "iwae:k=5", "iwae:k=50", "iwae-dreg:k=50"])
ap.add_argument("--eval-k", type=int, default=5000)
ap.add_argument("--out", default="runs/iwae-vs-vae")
ap.add_argument("--smoke", action="store_true")
args = ap.parse_args()
n_train, n_test = (None, 1000)
if args.smoke:
    args.dataset, args.epochs, args.eval_k, args.objectives, n_train, n_test = (
        "fashion-mnist-sample", 1, 10, ["elbo", "iwae:k=5"], 500, 50)

train = pvae.load_dataset(args.dataset, "train", binarize="dynamic", n=n_train)
test = pvae.load_dataset(args.dataset, "test", binarize="dynamic", n=n_test)

# the IWAE paper's one-layer architecture: 784-200-200-50, tanh, Bernoulli
model = dict(x_shape=(784,), latent_dim=50, hidden=(200, 200), activation="tanh", likelihood="bernoulli")
out = pvae.compare(model, train, test, args.objectives, epochs=args.epochs, eval_k=args.eval_k,
                   run_dir=args.out, progress=not args.smoke)
print(out["table"])
best = max(out["rows"], key=lambda r: r["log_px"])
print(f"best test log p(x): {best['objective']} with {best['log_px']:.2f} nats; figures in {args.out}")
