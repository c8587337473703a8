"""Anomaly detection by likelihood: train a VAE without one Fashion-MNIST class, score every test
image by -log p(x), and measure how well the scores single out the unseen class (AUROC).

    python examples/anomaly_detection.py --held-out 8      # bag; full Fashion-MNIST
    python examples/anomaly_detection.py --smoke
"""

import argparse

import torch

import pvae

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--dataset", default="fashion-mnist")
ap.add_argument("--held-out", type=int, default=8, help="the class left out of training (the anomaly)")
ap.add_argument("--epochs", type=int, default=10)
ap.add_argument("--k", type=int, default=1000)
ap.add_argument("--smoke", action="store_true")
args = ap.parse_args()
if args.smoke:
    args.dataset, args.epochs, args.k = "fashion-mnist-sample", 1, 10

train = pvae.load_dataset(args.dataset, "train", binarize="static", n=1000 if args.smoke else None)
test = pvae.load_dataset(args.dataset, "test", binarize="static", n=200 if args.smoke else 2000)

torch.manual_seed(0)
m = pvae.VAE(latent_dim=16, hidden=(256,))
pvae.fit(m, train.x[train.y != args.held_out], epochs=args.epochs, lr=2e-3, progress=not args.smoke)

scores = pvae.anomaly_scores(m, test, k=args.k, progress=not args.smoke)  # -log p(x)
auc = pvae.auroc(scores, test.y == args.held_out)
print(f"held-out class {args.held_out}: AUROC {auc:.3f}; mean -log p(x) {scores[test.y == args.held_out].mean():.1f} "
      f"(anomalies) vs {scores[test.y != args.held_out].mean():.1f} (normal)")
