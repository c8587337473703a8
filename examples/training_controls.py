"""The training controls a PyTorch Lightning or Pyro user reaches for: an optimizer of one's choice,
a learning-rate schedule, a validation split that picks the best checkpoint, and early stopping.

Three runs of the same VAE on Fashion-MNIST, each holding out 10% of the training images:
Adam at a constant rate; AdamW with a cosine schedule; SGD with Nesterov momentum and a
plateau schedule. Every run stops once its validation ELBO has not improved for 3 epochs and
keeps its best epoch as best.pt; the best checkpoints are then compared on the test set.

    python examples/training_controls.py             # full Fashion-MNIST, up to 30 epochs
    python examples/training_controls.py --smoke     # the embedded sample, seconds
"""

import argparse

import torch

import pvae

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--dataset", default="fashion-mnist")
ap.add_argument("--epochs", type=int, default=30)
ap.add_argument("--out", default="runs/training-controls")
ap.add_argument("--smoke", action="store_true")
args = ap.parse_args()
n_train, n_test, eval_k = None, 1000, 1000
if args.smoke:
    args.dataset, args.epochs, n_train, n_test, eval_k = "fashion-mnist-sample", 3, 600, 100, 20

train = pvae.load_dataset(args.dataset, "train", binarize="dynamic", n=n_train)
test = pvae.load_dataset(args.dataset, "test", binarize="dynamic", n=n_test)
runs = {
    "adam, constant lr": dict(optimizer="adam", lr=1e-3),
    "adamw + cosine": dict(optimizer="adamw", optimizer_args={"weight_decay": 1e-4}, lr=2e-3, scheduler="cosine"),
    "sgd nesterov + plateau": dict(optimizer="sgd", optimizer_args={"momentum": 0.9, "nesterov": True}, lr=5e-5,
                                   scheduler="plateau", scheduler_args={"factor": 0.5, "patience": 1}),
}
print("| run | epochs run | best epoch | best validation ELBO | test log p(x) of best.pt |")
print("|---|---|---|---|---|")
for name, controls in runs.items():
    torch.manual_seed(0)
    m = pvae.VAE(x_shape=(784,), latent_dim=20, hidden=(200,), activation="tanh")
    run_dir = f"{args.out}/{name.split()[0]}"
    h = pvae.fit(m, train, epochs=args.epochs, batch_size=100, validation=0.1, early_stopping=3, run_dir=run_dir,
                 overwrite=True, progress=not args.smoke, **controls)
    best = max(h, key=lambda r: r["val_elbo"])
    ll = pvae.log_likelihood(pvae.load(f"{run_dir}/best.pt"), test, k=eval_k, progress=False)
    print(f"| {name} | {len(h)} | {best['epoch']} | {best['val_elbo']:.2f} | {float(ll.mean()):.2f} |")
