"""A VAE with a 2-D latent space: every test image's posterior mean E_q[z|x], coloured by its
class (the whole test set), and the decoded grid of z over [-3, 3]^2 (the learned manifold).

    python examples/latent_map_2d.py --dataset fashion-mnist --epochs 20
    python examples/latent_map_2d.py --smoke
"""

import argparse

import torch

import pvae
from pvae import plots

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--dataset", default="fashion-mnist-sample")
ap.add_argument("--epochs", type=int, default=20)
ap.add_argument("--out", default="latent")
ap.add_argument("--smoke", action="store_true")
args = ap.parse_args()
if args.smoke:
    args.epochs = 1

train = pvae.load_dataset(args.dataset, "train", binarize="dynamic", n=1000 if args.smoke else None)
test = pvae.load_dataset(args.dataset, "test", binarize="dynamic")
torch.manual_seed(0)
m = pvae.VAE(latent_dim=2, hidden=(500, 500), activation="relu")
h = pvae.fit(m, train, epochs=args.epochs, test=test, progress=not args.smoke)
x = test.eval_x().reshape(len(test), -1)
z = m.encode(x)
# how well the 2-D code separates the classes: nearest class mean in z, on the test set
means = torch.stack([z[test.y == c].mean(0) for c in range(10)])
acc = float((torch.cdist(z, means).argmin(1) == test.y).float().mean())
print(f"test ELBO {h[-1]['test_elbo']:.2f}; nearest-class-mean accuracy in the 2-D latent space {acc:.3f} "
      f"({len(test)} test images)")
plots.latent_space(m, x, test.y, path=f"{args.out}_space.png", max_points=len(test))
plots.latent_map(m, path=f"{args.out}_map.png")
print(f"wrote {args.out}_space.png and {args.out}_map.png")
