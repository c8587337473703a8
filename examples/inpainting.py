"""Inpainting: fill in the missing half of test images from the observed half, with the posterior
p(z | observed pixels) approximated by importance sampling; compare with the mean image.

    python examples/inpainting.py
    python examples/inpainting.py --smoke
"""

import argparse

import torch

import pvae
from pvae import plots

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--dataset", default="fashion-mnist-sample")
ap.add_argument("--epochs", type=int, default=10)
ap.add_argument("--k", type=int, default=500)
ap.add_argument("--out", default="inpainting.png")
ap.add_argument("--smoke", action="store_true")
args = ap.parse_args()
if args.smoke:
    args.epochs, args.k = 1, 20

train = pvae.load_dataset(args.dataset, "train", binarize="static", n=1000 if args.smoke else None)
test = pvae.load_dataset(args.dataset, "test", n=100)
torch.manual_seed(0)
m = pvae.VAE(latent_dim=16, hidden=(256,))
pvae.fit(m, train, epochs=args.epochs, lr=2e-3, progress=not args.smoke)

x = test.x.reshape(100, -1)
observed = torch.ones(100, 28, 28, dtype=torch.bool)
observed[:, 14:, :] = False  # the bottom half is missing
observed = observed.reshape(100, -1)
filled = pvae.inpaint(m, x, observed, k=args.k)

missing = ~observed
mean_image = train.x.reshape(-1, 784).mean(0).expand_as(x)
print(f"squared error on the missing pixels: inpainting {((filled - x)[missing] ** 2).mean():.4f}, "
      f"mean image {((mean_image - x)[missing] ** 2).mean():.4f}")
plots.image_grid([x[:10], x[:10] * observed[:10], filled[:10]], path=args.out,
                 titles=["original", "observed", "inpainted"])
print(f"wrote {args.out}")
