"""``pvae demo``: the main job on the embedded Fashion-MNIST sample."""

from __future__ import annotations

import time

from pvae.cli.train import cmd_train
from pvae.data.datasets import EMBEDDED


def cmd_demo(args):
    """Default MLP VAE on the embedded Fashion-MNIST sample, binarized dynamically."""
    for key, value in dict(dataset=EMBEDDED, data_dir=None, binarize="dynamic", n_train=None, n_test=None,
                           latent_dim=50, hidden=[200, 200], activation="tanh", likelihood="bernoulli",
                           guide="diagonal", beta=1.0, net="mlp", likelihood_scale=None, objective="elbo",
                           model="vae", prior=None, prior_components=None, prior_flow_steps=None,
                           preset=None, inference="bottom-up", rank=None, flow_steps=None,
                           k=1, alpha=0.5, batch_size=100, lr=1e-3, warmup_epochs=0, resume=None, precision="fp32",
                           compile=False, clip_grad=None, exclude_class=None, optimizer="adam",
                           optimizer_args=None, scheduler=None, scheduler_args=None, validation=None,
                           early_stopping=None).items():
        setattr(args, key, value)
    if args.smoke:
        args.epochs, args.eval_k, args.n_train, args.n_test = 1, 10, 500, 100
        args.kind = "demo-smoke"  # never in the real demo's folder
    t0 = time.perf_counter()
    cmd_train(args)
    print(f"demo wall time: {time.perf_counter() - t0:.1f} s")
