"""Class-conditional generation with a conditional VAE: train p(z|y) p(x|z,y), then draw a row of
images for every class.

    python examples/conditional_generation.py
    python examples/conditional_generation.py --smoke
"""

import argparse

import torch

import pvae
from pvae import plots

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--dataset", default="fashion-mnist-sample")
ap.add_argument("--epochs", type=int, default=20)
ap.add_argument("--out", default="classes.png")
ap.add_argument("--smoke", action="store_true")
args = ap.parse_args()
if args.smoke:
    args.epochs = 1

train = pvae.load_dataset(args.dataset, "train", binarize="static", n=1000 if args.smoke else None)
test = pvae.load_dataset(args.dataset, "test", binarize="static", n=200)

torch.manual_seed(0)
m = pvae.ConditionalVAE(num_classes=10, latent_dim=4, hidden=(256,), prior="learned")  # p(z|y) per class
pvae.fit(m, train, epochs=args.epochs, lr=2e-3, test=test, progress=not args.smoke)  # labels come with the data
print(f"test log p(x|y) (k=100): {pvae.log_likelihood(m, test, k=100, progress=False).mean():.1f} nats")

rows = [m.sample(8, y=c) for c in range(10)]  # one row per class
plots.image_grid(rows, path=args.out, titles=[f"class {c}" for c in range(10)])

x = train.x.reshape(-1, 784)
means = torch.stack([x[train.y == c].mean(0) for c in range(10)])
generated = torch.cat(rows)
hits = (torch.cdist(generated, means).argmin(1) == torch.arange(10).repeat_interleave(8)).float().mean()
print(f"generated images nearest to their class's mean image: {hits:.0%} (chance 10%); wrote {args.out}")
