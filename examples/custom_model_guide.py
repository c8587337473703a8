"""Write your own model/guide pair and train it with pvae's trainer and evaluator.

A VAE whose latent is a point on a circle-ish 2-D plane, decoded by a small MLP: nothing here
comes from pvae but the training loop and the evaluation. The only rule: every sample site of a
datapoint sits inside ``pyro.plate("data", ...)``, with ``.to_event`` for its own dims.

    python examples/custom_model_guide.py [--smoke]
"""

import argparse

import pyro
import pyro.distributions as dist
from torch import nn

import pvae
from pvae import plots


class TwoDimVAE(nn.Module):
    """p(z) = N(0, I_2), p(x|z) = Bernoulli(logits = f(z)), q(z|x) = N(g_mu(x), diag g_sigma(x)^2)."""

    x_shape = (784,)  # pvae reshapes (n, 1, 28, 28) images to this

    def __init__(self, hidden=256):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(784, hidden), nn.ReLU(), nn.Linear(hidden, 4))
        self.decoder = nn.Sequential(nn.Linear(2, hidden), nn.ReLU(), nn.Linear(hidden, 784))

    def model(self, x):
        n = x.shape[0]
        with pyro.plate("data", n):
            z = pyro.sample("z", dist.Normal(x.new_zeros(n, 2), 1.0).to_event(1))
            # z may carry a leading particle dim: nn.Linear broadcasts over it
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z), validate_args=False).to_event(1), obs=x)

    def guide(self, x):
        loc, raw_scale = self.encoder(x).chunk(2, dim=-1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, nn.functional.softplus(raw_scale) + 1e-4).to_event(1))


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    n = 500 if args.smoke else None
    train = pvae.load_dataset("fashion-mnist-sample", "train", binarize="static", n=n)
    test = pvae.load_dataset("fashion-mnist-sample", "test", binarize="static", n=100 if args.smoke else None)

    m = TwoDimVAE()
    before = pvae.log_likelihood(m, test, k=100, progress=False).mean()
    pvae.fit(m, train, objective="iwae", k=5, epochs=1 if args.smoke else args.epochs, lr=1e-3, test=test)
    after = pvae.log_likelihood(m, test, k=100, progress=False).mean()
    print(f"test log p(x) (k=100): {before:.1f} -> {after:.1f} nats")
    plots.latent_space(m, test.eval_x().reshape(-1, 784), test.y, path="custom_latent_space.png")
    print("wrote custom_latent_space.png")
