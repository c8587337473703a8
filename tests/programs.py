"""Model/guide pairs written the way Pyro users write them, for tests/test_user_programs.py.

Each is a class of real program seen in the wild (Pyro's examples and tutorials, other Pyro
VAE code), written here from scratch: ``pyro.module`` registration, plates named anything or
sizeless, nets that cannot take a particle dim, conditioning inputs, ``pyro.param`` globals,
training scales, several observed inputs, global latents, masks, factors, program-side
subsampling. ``LinearGaussian`` has an exact log p(x) and an exact-posterior guide, so the
importance-sampled log p(x) of every variant of it equals the closed form at any k.
"""

import math

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions import constraints
from torch import nn


def init_(module, seed=0):
    """Deterministic weights (so pvae and a plain SVI loop start from the same values)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1]))
    return module


# -- Pyro's examples/vae style: pyro.module inside the program, reshape(-1, D) nets --------------

class Encoder(nn.Module):
    def __init__(self, x_dim, z_dim, hidden):
        super().__init__()
        self.x_dim = x_dim
        self.fc1, self.fc21, self.fc22 = nn.Linear(x_dim, hidden), nn.Linear(hidden, z_dim), nn.Linear(hidden, z_dim)

    def forward(self, x):
        x = x.reshape(-1, self.x_dim)
        h = nn.functional.softplus(self.fc1(x))
        return self.fc21(h), torch.exp(self.fc22(h))


class Decoder(nn.Module):
    def __init__(self, x_dim, z_dim, hidden):
        super().__init__()
        self.fc1, self.fc21 = nn.Linear(z_dim, hidden), nn.Linear(hidden, x_dim)

    def forward(self, z):
        return torch.sigmoid(self.fc21(nn.functional.softplus(self.fc1(z)))) * (1 - 2e-6) + 1e-6


class ExampleVAE(nn.Module):
    """The shape of Pyro's examples/vae/vae.py: modules registered with pyro.module, the data
    plate named by the caller (``plate``), ``size=None`` for a sizeless plate."""

    def __init__(self, x_dim=784, z_dim=4, hidden=32, plate="data", sized=True):
        super().__init__()
        self.encoder, self.decoder = Encoder(x_dim, z_dim, hidden), Decoder(x_dim, z_dim, hidden)
        self.z_dim, self.x_dim, self.plate, self.sized = z_dim, x_dim, plate, sized
        init_(self)

    def _plate(self, x):
        return pyro.plate(self.plate, x.shape[0]) if self.sized else pyro.plate(self.plate)

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with self._plate(x):
            z_loc = x.new_zeros(torch.Size((x.shape[0], self.z_dim)))
            z = pyro.sample("latent", dist.Normal(z_loc, torch.ones_like(z_loc)).to_event(1))
            pyro.sample("obs", dist.Bernoulli(self.decoder(z)).to_event(1), obs=x.reshape(-1, self.x_dim))

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        with self._plate(x):
            loc, scale = self.encoder(x)
            pyro.sample("latent", dist.Normal(loc, scale).to_event(1))


# -- BatchNorm nets and a plate named "batch": no particle dim possible -------------------------

class BatchNormVAE(nn.Module):
    def __init__(self, x_dim=784, z_dim=4, hidden=32):
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(x_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, 2 * z_dim))
        self.dec = nn.Sequential(nn.Linear(z_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, x_dim))
        self.z_dim = z_dim

    def model(self, x):
        pyro.module("bn_vae", self)
        with pyro.plate("batch", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], self.z_dim), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.dec(z)).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("bn_vae", self)
        loc, log_scale = self.enc(x).chunk(2, -1)
        with pyro.plate("batch", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))


# -- Pyro's examples/cvae style: image-valued ys, sizeless plate, boolean masks, .view(batch) -----

class QuadrantCVAE(nn.Module):
    """xs: an image with its hidden part set to -1; ys: the whole image. model(xs, ys=None)."""

    def __init__(self, x_dim=16, z_dim=2, hidden=16):
        super().__init__()
        self.prior_net = nn.Sequential(nn.Linear(x_dim, hidden), nn.ReLU(), nn.Linear(hidden, 2 * z_dim))
        self.recognition_net = nn.Sequential(nn.Linear(2 * x_dim, hidden), nn.ReLU(), nn.Linear(hidden, 2 * z_dim))
        self.generation_net = nn.Sequential(nn.Linear(z_dim + x_dim, hidden), nn.ReLU(), nn.Linear(hidden, x_dim))
        self.x_dim = x_dim
        init_(self)

    def model(self, xs, ys=None):
        pyro.module("cvae", self)
        batch_size = xs.shape[0]
        with pyro.plate("data"):
            loc, log_scale = self.prior_net(xs).chunk(2, -1)
            zs = pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))
            probs = torch.sigmoid(self.generation_net(torch.cat([zs, xs], -1)))
            if ys is not None:
                hidden = (xs == -1).view(-1, self.x_dim)
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


def quadrant_data(n=64, side=4, seed=0):
    """Binary side x side images; xs hides the bottom half (-1), ys is the whole image."""
    g = torch.Generator().manual_seed(seed)
    row = (torch.rand(n, 1, generator=g) < 0.5).float()
    ys = row.expand(n, side * side).clone()
    ys = torch.where(torch.rand(n, side * side, generator=g) < 0.1, 1 - ys, ys)
    xs = ys.clone()
    xs[:, side * side // 2:] = -1.0
    return xs, ys


# -- Pyro's ss_vae_M2 style: sizeless plate, model(xs, ys=None), y enumerated ---------------------

def broadcast(*ts):
    """Broadcast the leading dims of tensors, keeping each one's last dim (as Pyro's ss_vae nets do)."""
    shape = torch.broadcast_shapes(*(t.shape[:-1] for t in ts))
    return [t.expand(shape + t.shape[-1:]) for t in ts]


class M2Style(nn.Module):
    def __init__(self, x_dim=16, z_dim=2, classes=3, hidden=16):
        super().__init__()
        self.encoder_y = nn.Sequential(nn.Linear(x_dim, hidden), nn.ReLU(), nn.Linear(hidden, classes))
        self.encoder_z = nn.Sequential(nn.Linear(x_dim + classes, hidden), nn.ReLU(), nn.Linear(hidden, 2 * z_dim))
        self.decoder = nn.Sequential(nn.Linear(z_dim + classes, hidden), nn.ReLU(), nn.Linear(hidden, x_dim))
        self.z_dim, self.classes = z_dim, classes
        init_(self)

    def model(self, xs, ys=None):
        pyro.module("ss_vae", self)
        batch_size = xs.size(0)
        with pyro.plate("data"):
            zs = pyro.sample("z", dist.Normal(xs.new_zeros(batch_size, self.z_dim), 1.0).to_event(1))
            alpha_prior = xs.new_ones(batch_size, self.classes) / self.classes
            ys = pyro.sample("y", dist.OneHotCategorical(alpha_prior), obs=ys)
            logits = self.decoder(torch.cat(broadcast(zs, ys), -1))
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=xs)

    def guide(self, xs, ys=None):
        with pyro.plate("data"):
            if ys is None:
                alpha = torch.softmax(self.encoder_y(xs), -1)
                ys = pyro.sample("y", dist.OneHotCategorical(alpha), infer={"enumerate": "parallel"})
            loc, log_scale = self.encoder_z(torch.cat(broadcast(xs, ys), -1)).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))


# -- the scANVI tutorial's shape: a global pyro.param (inverse dispersion), plate "cells" ---------

class CountVAE(nn.Module):
    def __init__(self, genes=8, z_dim=2, hidden=16):
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(genes, hidden), nn.ReLU(), nn.Linear(hidden, 2 * z_dim))
        self.dec = nn.Sequential(nn.Linear(z_dim, hidden), nn.ReLU(), nn.Linear(hidden, genes))
        self.genes, self.z_dim = genes, z_dim
        init_(self)

    def model(self, x):
        pyro.module("count_vae", self)
        theta = pyro.param("inverse_dispersion", 2.0 * x.new_ones(self.genes), constraint=constraints.positive)
        with pyro.plate("cells", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], self.z_dim), 1.0).to_event(1))
            mu = nn.functional.softplus(self.dec(z)) + 1e-3
            logits = (mu + 1e-6).log() - (theta + 1e-6).log()
            pyro.sample("x", dist.NegativeBinomial(total_count=theta, logits=logits).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("count_vae", self)
        loc, log_scale = self.enc(torch.log1p(x)).chunk(2, -1)
        with pyro.plate("cells", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))


def count_data(n=60, genes=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    rate = torch.exp(torch.randn(n, 1, generator=g) + torch.randn(1, genes, generator=g))
    return torch.poisson(rate * 3, generator=g)


# -- a linear-Gaussian model with a closed form, in every style of issue 19 ----------------------

class LinearGaussian(nn.Module):
    """p(z) = N(0, I), p(v | z) = N(W z + c, sigma^2 I) for the observed vector v; the guide is
    the exact posterior given the observed entries of v, so every log-weight is log p(v_obs).

    ``split``: v is given as several inputs model(x, a, b) (all observed); ``mask``: a boolean
    tensor argument marks the observed entries, applied as ``how`` ("obs_mask", "poutine",
    "dist") inside a "features" plate; ``factor``: a constant per-datapoint pyro.factor; ``global_sigma``: sigma is a global
    latent with a LogNormal prior and a LogNormal guide (pyro.param); ``plate``: its name;
    ``scale``: poutine.scale on the latent site of the model (and guide, if ``scale_guide``).
    """

    def __init__(self, x_dim=5, z_dim=2, sigma=0.5, seed=0, plate="data", split=None, how=None, factor=None,
                 global_sigma=False, scale=None, scale_guide=True, subsample=False):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.W = nn.Parameter(torch.randn(x_dim, z_dim, generator=g))
        self.c = nn.Parameter(torch.randn(x_dim, generator=g))
        self.sigma, self.x_dim, self.z_dim, self.plate = sigma, x_dim, z_dim, plate
        self.split, self.how, self.factor, self.global_sigma = split, how, factor, global_sigma
        self.scale, self.scale_guide, self.subsample = scale, scale_guide, subsample
        self.log_sigma_q = nn.Parameter(torch.tensor(0.0))  # a guide parameter: widens q by exp(.)

    def _v(self, x, a, b):
        return x if self.split is None else torch.cat([x, a, b], -1)

    def _plate(self, n):
        if self.subsample:
            return pyro.plate(self.plate, n, subsample_size=n, dim=-2)
        return pyro.plate(self.plate, n, dim=-2)

    def _scaled(self, guide=False):
        if self.scale is None or (guide and not self.scale_guide):
            return poutine.scale(scale=1.0)
        return poutine.scale(scale=self.scale)

    def _sigma(self):
        if not self.global_sigma:
            return torch.tensor(self.sigma)
        return pyro.sample("sigma", dist.LogNormal(math.log(self.sigma), 0.1))

    def model(self, x, a=None, b=None, m=None):
        pyro.module("linear_gaussian", self)
        v = self._v(x, a, b)
        n = v.shape[0]
        sigma = self._sigma()
        data = self._plate(n)
        with data as ind, self._scaled():
            z = pyro.sample("z", dist.Normal(v.new_zeros(n, 1, self.z_dim), 1.0).to_event(1))
        v = v[ind]
        loc = (z @ self.W.T + self.c).squeeze(-2)
        with data, pyro.plate("features", self.x_dim, dim=-1):
            if self.how is None:
                pyro.sample("v", dist.Normal(loc, sigma), obs=v)
            elif self.how == "obs_mask":
                pyro.sample("v", dist.Normal(loc, sigma), obs=v, obs_mask=m[ind])
            elif self.how == "poutine":
                with poutine.mask(mask=m[ind]):
                    pyro.sample("v", dist.Normal(loc, sigma), obs=v)
            else:
                pyro.sample("v", dist.Normal(loc, sigma).mask(m[ind]), obs=v)
        with data:
            if self.factor is not None:
                pyro.factor("penalty", self.factor * v.new_ones(n, 1))
            pyro.deterministic("v_mean", loc.unsqueeze(-2), event_dim=1)
        return z

    def posterior(self, v, m, sigma):
        """The exact posterior N(mean_i, S_i) of each datapoint given its observed entries (and
        sigma: a scalar, or one per particle of shape (k, 1, 1))."""
        m = m.to(v.dtype)
        s2 = (sigma ** 2).reshape(sigma.shape[:-2] + (1, 1, 1)) if sigma.dim() else sigma ** 2
        S = torch.linalg.inv(torch.eye(self.z_dim) + torch.einsum("dj,nd,dk->njk", self.W, m, self.W) / s2)
        mean = (S @ (self.W.T @ (m * (v - self.c)).unsqueeze(-1))).squeeze(-1) / (s2.squeeze(-1) if s2.dim() else s2)
        return mean, S

    def guide(self, x, a=None, b=None, m=None):
        pyro.module("linear_gaussian", self)
        v = self._v(x, a, b)
        n = v.shape[0]
        sigma = torch.tensor(self.sigma)
        if self.global_sigma:  # q(sigma) q(z | x, sigma): z's posterior is exact given sigma
            loc = pyro.param("sigma_loc", torch.tensor(math.log(self.sigma)))
            sigma = pyro.sample("sigma", dist.LogNormal(loc, pyro.param("sigma_scale", torch.tensor(0.05),
                                                                       constraint=constraints.positive)))
        mask = torch.ones_like(v, dtype=torch.bool) if m is None else m
        with self._plate(n) as ind:
            mean, S = self.posterior(v[ind], mask[ind], sigma)
            S = S * torch.exp(2 * self.log_sigma_q)
            with self._scaled(guide=True):
                pyro.sample("z", dist.MultivariateNormal(mean.unsqueeze(-2), covariance_matrix=S.unsqueeze(-3)))

    @torch.no_grad()
    def exact_log_p(self, v, m=None, sigma=None):
        """log p(v_obs) per datapoint: N(v_o; c_o, W_o W_o^T + sigma^2 I)."""
        sigma = self.sigma if sigma is None else sigma
        m = torch.ones_like(v, dtype=torch.bool) if m is None else m
        out = []
        for vi, mi in zip(v, m):
            if not mi.any():
                out.append(v.new_zeros(()))
                continue
            Wo, co = self.W[mi], self.c[mi]
            cov = Wo @ Wo.T + sigma ** 2 * torch.eye(int(mi.sum()))
            out.append(dist.MultivariateNormal(co, covariance_matrix=cov).log_prob(vi[mi]))
        out = torch.stack(out)
        return out + (self.factor or 0.0)

    def sample_v(self, n, seed=1):
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, self.z_dim, generator=g)
        with torch.no_grad():
            return z @ self.W.T + self.c + self.sigma * torch.randn(n, self.x_dim, generator=g)


# -- PyroSample priors on decoder weights (global latents) with an autoguide for them -------------

class BayesianDecoderVAE(nn.Module):
    """A Bayesian linear decoder (PyroModule + PyroSample: a global latent weight) and an amortized
    local guide; the weight's guide is Pyro's AutoNormal (auxiliary sites and a Delta)."""

    def __init__(self, x_dim=6, z_dim=2):
        super().__init__()
        from pyro.infer.autoguide import AutoNormal
        from pyro.nn import PyroModule, PyroSample

        self.lin = PyroModule[nn.Linear](z_dim, x_dim)
        self.lin.weight = PyroSample(dist.Normal(0.0, 1.0).expand([x_dim, z_dim]).to_event(2))
        self.enc = nn.Linear(x_dim, 2 * z_dim)
        self.auto = AutoNormal(poutine.block(self.model, hide=["z", "x"]))
        self.z_dim = z_dim
        init_(self.enc)

    def model(self, x):
        data = pyro.plate("data", x.shape[0])
        with data:
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], self.z_dim), 1.0).to_event(1))
        loc = self.lin(z)  # the weight is drawn once, outside the data plate
        with data:
            pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x)

    def guide(self, x):
        self.auto(x)
        pyro.module("enc", self.enc)
        loc, log_scale = self.enc(x).chunk(2, -1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))
