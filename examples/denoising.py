"""Denoising: a plain autoencoder, a denoising autoencoder (trained on masked inputs, Vincent et
al. 2008) and a VAE each reconstruct test images with half of their pixels zeroed; the squared
error against the clean images says which learned to undo the corruption.

    python examples/denoising.py --dataset fashion-mnist --epochs 10
    python examples/denoising.py --smoke
"""

import argparse

import torch

import pvae
from pvae import plots

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--dataset", default="fashion-mnist-sample")
ap.add_argument("--epochs", type=int, default=10)
ap.add_argument("--noise", type=float, default=0.5, help="share of pixels zeroed, in training (DAE) and test")
ap.add_argument("--out", default="denoising.png")
ap.add_argument("--smoke", action="store_true")
args = ap.parse_args()
if args.smoke:
    args.epochs = 1

train = pvae.load_dataset(args.dataset, "train", n=1000 if args.smoke else None)
test = pvae.load_dataset(args.dataset, "test", n=1000)
x = test.x.reshape(len(test), -1)
noisy = pvae.corrupt(x, args.noise, kind="mask", seed=0)
variants = {
    "AE": pvae.AE(latent_dim=32, hidden=(256,)),
    f"DAE (noise {args.noise})": pvae.AE(latent_dim=32, hidden=(256,), noise=args.noise),
    "VAE": pvae.VAE(latent_dim=32, hidden=(256,), activation="relu"),
}
denoised = {}
print(f"squared error to the clean test images ({len(test)} images, {args.noise:.0%} of pixels zeroed):")
print(f"  corrupted input itself: {((noisy - x) ** 2).mean():.4f}")
for name, m in variants.items():
    torch.manual_seed(0)
    pvae.fit(m, train, epochs=args.epochs, lr=2e-3, progress=not args.smoke)
    m.eval()
    denoised[name] = m.reconstruct(noisy)
    clean_rec = m.reconstruct(x)
    print(f"  {name:18s} reconstruction of the corrupted: {((denoised[name] - x) ** 2).mean():.4f}  "
          f"(of the clean: {((clean_rec - x) ** 2).mean():.4f})")
plots.denoising(x, noisy, denoised, path=args.out)
print(f"wrote {args.out}")
