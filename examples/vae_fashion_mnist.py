"""A VAE on Fashion-MNIST: train, evaluate log p(x) with k importance samples, draw figures.

    python examples/vae_fashion_mnist.py                 # full Fashion-MNIST (Debian's files or a download)
    python examples/vae_fashion_mnist.py --smoke         # the embedded sample, seconds
"""

import argparse
from pathlib import Path

import pvae
from pvae import plots

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--dataset", default="fashion-mnist")
ap.add_argument("--epochs", type=int, default=10)
ap.add_argument("--k", type=int, default=5000, help="importance samples for test log p(x)")
ap.add_argument("--n-test", type=int, default=1000)
ap.add_argument("--device", default=None)
ap.add_argument("--out", default="runs/example-vae")
ap.add_argument("--smoke", action="store_true", help="tiny budget on the embedded sample")
args = ap.parse_args()
if args.smoke:
    args.dataset, args.epochs, args.k, args.n_test = "fashion-mnist-sample", 1, 10, 50

# dynamic binarization: a fresh Bernoulli draw of every image each epoch; the test set is drawn once
train = pvae.load_dataset(args.dataset, "train", binarize="dynamic", n=1000 if args.smoke else None)
test = pvae.load_dataset(args.dataset, "test", binarize="dynamic", n=args.n_test)

# p(z) = N(0, I_50), p(x|z) = Bernoulli(decoder(z)), q(z|x) = N(mu(x), diag sigma(x)^2)
m = pvae.VAE(x_shape=(784,), latent_dim=50, hidden=(200, 200), activation="tanh",
             likelihood="bernoulli", guide="diagonal")
h = pvae.fit(m, train, objective="elbo", epochs=args.epochs, batch_size=100, lr=1e-3, seed=0,
             device=args.device, test=test, run_dir=args.out)

res = pvae.evaluate(m, test, k=args.k)
s = res["summary"]
print(f"test log p(x) = {s['log_px']:.2f} nats (k={args.k}), ELBO = {s['elbo']:.2f} "
      f"(reconstruction {s['recon']:.2f}, KL {s['kl']:.2f}), active units {s['active_units']}, "
      f"{sum(r['seconds'] for r in h) / len(h):.1f} s/epoch")

out = Path(args.out)
x = test.eval_x().reshape(-1, 784)
plots.reconstructions(m, x, path=out / "reconstructions.png")
plots.samples(m, path=out / "samples.png")
plots.latent_space(m, x, test.y, path=out / "latent_space.png")
plots.training_curves(h, path=out / "training_curves.png")
plots.khat_histogram(res["khat"], path=out / "khat.png")
plots.interpolation(m, x[0], x[1], path=out / "interpolation.png")
# traversal of the 8 latent dimensions whose posterior means vary most across the test set
# (the active ones); the others decode to the same image whatever their value
dims = m.encode(x).var(0).argsort(descending=True)[:8].tolist()
plots.traversal(m, x[0], dims=dims, path=out / "traversal.png")
print(f"figures in {out}")
