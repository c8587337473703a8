"""Discrete latents two ways: a Gumbel-softmax VAE (20 categorical variables of 10 classes, the
temperature annealed step by step; relaxed and straight-through) and a VQ-VAE (one code from a
codebook of 64, a nearest-code point-mass guide). Reports each one's test reconstruction error,
the Gumbel-softmax models' importance-sampled log p(x) of the discrete model, the VQ-VAE's codes
in use, and draws reconstructions.

    python examples/discrete_latents.py --dataset fashion-mnist --epochs 10
    python examples/discrete_latents.py --smoke
"""

import argparse

import torch

import pvae
from pvae import plots

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--dataset", default="fashion-mnist-sample")
ap.add_argument("--epochs", type=int, default=10)
ap.add_argument("--k", type=int, default=1000, help="importance samples for log p(x)")
ap.add_argument("--out", default="discrete_latents.png")
ap.add_argument("--smoke", action="store_true")
args = ap.parse_args()
if args.smoke:
    args.epochs, args.k = 1, 10

train = pvae.load_dataset(args.dataset, "train", binarize="dynamic", n=1000 if args.smoke else None)
test = pvae.load_dataset(args.dataset, "test", binarize="dynamic", n=200 if args.smoke else 1000)
x = test.eval_x().reshape(len(test), -1)
hidden = (64,) if args.smoke else (512, 256)
steps = args.epochs * -(-len(train) // 100)
rate = 3.0 / steps  # tau reaches its floor of 0.5 about a fifth of the way in (exp(-0.6) > 0.5 > exp(-0.7))
variants = {
    "gumbel-softmax": (pvae.GumbelSoftmaxVAE(hidden=hidden, anneal_rate=rate), "mf-elbo"),
    "straight-through": (pvae.GumbelSoftmaxVAE(hidden=hidden, anneal_rate=rate, hard=True), "mf-elbo"),
    "vq-vae": (pvae.VQVAE(hidden=hidden[-1:], num_codes=64, code_dim=16), "elbo"),
}
rows = {}
for name, (m, objective) in variants.items():
    torch.manual_seed(0)
    pvae.fit(m, train, objective, epochs=args.epochs, progress=not args.smoke)
    m.eval()
    rec = m.reconstruct(x)
    line = f"{name:17s} reconstruction MSE {((rec - x) ** 2).mean():.4f}"
    if isinstance(m, pvae.GumbelSoftmaxVAE):
        s = pvae.evaluate(m, x, k=args.k, progress=False, units=False)["summary"]
        line += f", test log p(x) {s['log_px']:.2f} (ELBO {s['elbo']:.2f}, KL {s['kl']:.2f}, k = {args.k})"
    else:
        line += f", {m.encode(x).unique().numel()} of {m.config['num_codes']} codes in use"
    print(line, flush=True)
    rows[name] = rec[:10]
plots.image_grid([x[:10]] + list(rows.values()), path=args.out, titles=["input"] + list(rows))
print(f"wrote {args.out}")
