"""Pyro programs as Pyro users write them, trained and evaluated by pvae unchanged.

Three programs in the style of Pyro's own examples, none of which follows pvae's conventions:

1. a VAE as in Pyro's examples/vae: ``pyro.module`` registration inside model and guide, a plate
   named "batch", an encoder that flattens with ``x.reshape(-1, 784)``;
2. the same with BatchNorm in both nets: no leading particle dim possible, so pvae draws
   particles one trace at a time (and says so);
3. a conditional VAE as in Pyro's examples/cvae: ``model(xs, ys=None)`` conditions on the top
   half of an image (an image-valued input, the bottom half set to -1), scores only the hidden
   half through boolean masks and ``.view(batch_size, -1)``, in a sizeless ``pyro.plate("data")``.

Program 1 is also trained by a textbook Pyro SVI loop (same initial weights, seed, data order and
budget); pvae's evaluator scores both, so the two trainers can be compared on equal terms.

    python examples/pyro_programs.py [--smoke] [--epochs N]
"""

import argparse
import copy
import warnings

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO
from torch import nn

import pvae


class Encoder(nn.Module):
    def __init__(self, z_dim, hidden, batchnorm=False):
        super().__init__()
        self.fc1 = nn.Linear(784, hidden)
        self.bn = nn.BatchNorm1d(hidden) if batchnorm else nn.Identity()
        self.fc21, self.fc22 = nn.Linear(hidden, z_dim), nn.Linear(hidden, z_dim)

    def forward(self, x):
        h = nn.functional.softplus(self.bn(self.fc1(x.reshape(-1, 784))))
        return self.fc21(h), torch.exp(self.fc22(h))


class Decoder(nn.Module):
    def __init__(self, z_dim, hidden, batchnorm=False):
        super().__init__()
        self.fc1, self.fc21 = nn.Linear(z_dim, hidden), nn.Linear(hidden, 784)
        self.bn = nn.BatchNorm1d(hidden) if batchnorm else nn.Identity()

    def forward(self, z):
        return torch.sigmoid(self.fc21(nn.functional.softplus(self.bn(self.fc1(z))))) * (1 - 2e-6) + 1e-6


class VAE(nn.Module):
    def __init__(self, z_dim=20, hidden=200, batchnorm=False):
        super().__init__()
        self.encoder, self.decoder = Encoder(z_dim, hidden, batchnorm), Decoder(z_dim, hidden, batchnorm)
        self.z_dim = z_dim

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("batch", x.shape[0]):
            z_loc = x.new_zeros(torch.Size((x.shape[0], self.z_dim)))
            z = pyro.sample("latent", dist.Normal(z_loc, torch.ones_like(z_loc)).to_event(1))
            pyro.sample("obs", dist.Bernoulli(self.decoder(z), validate_args=False).to_event(1),
                        obs=x.reshape(-1, 784))

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        with pyro.plate("batch", x.shape[0]):
            z_loc, z_scale = self.encoder(x)
            pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))


class CVAE(nn.Module):
    """p(z | xs) p(ys_hidden | z, xs), q(z | xs, ys): xs is the image with its bottom half -1."""

    def __init__(self, z_dim=20, hidden=200):
        super().__init__()
        self.prior_net = nn.Sequential(nn.Linear(784, hidden), nn.ReLU(), nn.Linear(hidden, 2 * z_dim))
        self.recognition_net = nn.Sequential(nn.Linear(2 * 784, hidden), nn.ReLU(), nn.Linear(hidden, 2 * z_dim))
        self.generation_net = nn.Sequential(nn.Linear(z_dim + 784, hidden), nn.ReLU(), nn.Linear(hidden, 784))

    def model(self, xs, ys=None):
        pyro.module("generation_net", self)
        batch_size = xs.shape[0]
        with pyro.plate("data"):
            loc, log_scale = self.prior_net(xs).chunk(2, -1)
            zs = pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))
            probs = torch.sigmoid(self.generation_net(torch.cat([zs, xs], -1)))
            if ys is not None:
                hidden = (xs == -1).view(-1, 784)
                pyro.sample("y", dist.Bernoulli(probs[hidden].view(batch_size, -1), validate_args=False).to_event(1),
                            obs=ys[hidden].view(batch_size, -1))
            else:
                pyro.deterministic("y", probs.detach())

    def guide(self, xs, ys=None):
        with pyro.plate("data"):
            if ys is None:
                loc, log_scale = self.prior_net(xs).chunk(2, -1)
            else:
                loc, log_scale = self.recognition_net(torch.cat([xs, ys], -1)).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))


def svi_loop(vae, x, epochs, batch_size, seed):
    """The textbook loop: SVI + pyro.optim.Adam + Trace_ELBO, pvae.fit's data order."""
    pyro.set_rng_seed(seed)
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), loss=Trace_ELBO())
    shuffle = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(x.shape[0], generator=shuffle)
        for s in range(0, x.shape[0], batch_size):
            svi.step(x[perm[s:s + batch_size]])
    return vae


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="a few hundred images, one epoch")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--k", type=int, default=1000, help="importance samples for test log p(x)")
    args = ap.parse_args()
    n_train, n_test, epochs, k = (300, 50, 1, 20) if args.smoke else (None, 500, args.epochs, args.k)
    train = pvae.load_dataset("fashion-mnist-sample", "train", binarize="static", n=n_train)
    test = pvae.load_dataset("fashion-mnist-sample", "test", binarize="static", n=n_test)
    x, xt = train.x.reshape(len(train), 784), test.x.reshape(len(test), 784)
    rows = []

    # 1. the examples/vae shape, trained by pvae and by the textbook SVI loop from the same weights
    torch.manual_seed(0)
    vae = VAE()
    twin = copy.deepcopy(vae)
    pyro.clear_param_store()
    h = pvae.fit(vae, x, epochs=epochs, batch_size=100, test=xt, progress=False)
    rows.append(("examples/vae style, pvae.fit", h.program.data_plate, h.program.vectorize,
                 float(pvae.log_likelihood(vae, xt, k=k, progress=False).mean())))
    pyro.clear_param_store()
    svi_loop(twin, x, epochs, 100, seed=0)
    rows.append(("examples/vae style, Pyro SVI loop", "batch", True,
                 float(pvae.log_likelihood(twin, xt, k=k, progress=False).mean())))

    # 2. BatchNorm nets: particles one trace at a time
    pyro.clear_param_store()
    torch.manual_seed(0)
    bn = VAE(batchnorm=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        h = pvae.fit(bn, x, objective="iwae", k=5, epochs=epochs, batch_size=100, test=xt, progress=False)
        rows.append(("BatchNorm nets, iwae k=5", h.program.data_plate, h.program.vectorize,
                     float(pvae.log_likelihood(bn, xt, k=k, progress=False).mean())))

    # 3. the examples/cvae shape: log p(bottom half | top half)
    pyro.clear_param_store()
    torch.manual_seed(0)
    xs, xs_t = x.clone(), xt.clone()
    xs[:, 392:], xs_t[:, 392:] = -1.0, -1.0
    cvae = CVAE()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        h = pvae.fit(cvae, (xs, x), epochs=epochs, batch_size=100, test=(xs_t, xt), progress=False)
        rows.append(("examples/cvae style, log p(bottom | top)", h.program.data_plate, h.program.vectorize,
                     float(pvae.log_likelihood(cvae, (xs_t, xt), k=k, progress=False).mean())))

    print(f"{len(x)} training images, {epochs} epochs, test log p with k = {k} on {len(xt)} images\n")
    print("| program | data plate found | particles vectorized | test log p (nats) |")
    print("|---|---|---|---|")
    for name, plate, vec, lp in rows:
        print(f"| {name} | {plate} | {'yes' if vec else 'no: one trace each'} | {lp:.2f} |")


if __name__ == "__main__":
    main()
