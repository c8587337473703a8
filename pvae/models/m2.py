r"""The semi-supervised VAE "M2" of Kingma, Rezende, Mohamed & Welling (2014) as a Pyro pair.

Generative model, for each datapoint n, with the label y a latent variable when unknown:

.. math:: y_n \sim \operatorname{Cat}(1/C), \qquad z_n \sim \mathcal N(0, I), \qquad
          x_n \sim p_\theta(x \mid y_n, z_n).

Guide: a classifier q(y|x) = Cat(pi_phi(x)) and q(z|x,y) = N(mu_phi(x, y), diag sigma_phi(x, y)^2).
Labels come in one tensor with ``-1`` where a label is unknown (``pvae.data.datasets.semi_supervised``
builds it). For a labelled datapoint the guide's q(y|x) is replaced by a point mass on the
known label, so the bound is Kingma's L(x, y) <= log p(x, y); for an unlabelled one it is
U(x) = sum_y q(y|x) [L(x, y)] + H[q(y|x)] <= log p(x). With ``objective="enum-elbo"``
(``TraceEnum_ELBO``) the sum over the C labels is exact: the guide marks y for parallel
enumeration, so every batch runs the decoder once per class.

The classifier would otherwise learn from unlabelled data only, so the model adds Kingma's
classification term alpha * log q(y_n | x_n) for each labelled datapoint (``classifier_weight``,
a ``pyro.factor`` in the data plate). Test accuracy is that of `classify`, argmax q(y|x).
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from torch.nn import functional as F

from pvae.models.base import PyroVAE
from pvae.nn.guides import DiagonalNormal, standard_normal
from pvae.nn.likelihoods import make_likelihood
from pvae.nn.nets import MLP
from pvae.util.validate import check_hidden, check_shape, check_size

#: a log-probability that is 0 after exp() and finite after multiplication by 0 (point masses)
NEVER = -1e4


def cat(*tensors):
    """Concatenate along the last dim after broadcasting the leading dims (enumerated labels
    carry extra leading dims)."""
    shape = torch.broadcast_shapes(*(t.shape[:-1] for t in tensors))
    return torch.cat([t.expand(shape + t.shape[-1:]) for t in tensors], -1)


class SemiSupervisedVAE(PyroVAE):
    """M2: p(y) p(z) p(x|y,z) with q(y|x) q(z|x,y); labels ``-1`` mark unlabelled datapoints.

    Args:
        num_classes: C.
        latent_dim: D, the size of z.
        hidden: hidden widths of the classifier, the encoder and (mirrored) the decoder.
        classifier_weight: alpha, the weight of log q(y|x) on each labelled datapoint.
    """

    needs_labels = True
    missing_labels = True  # -1 = unknown

    def __init__(self, x_shape=(784,), num_classes=10, latent_dim=50, hidden=(500,), activation="softplus",
                 likelihood="bernoulli", classifier_weight=50.0):
        x_shape, hidden = check_shape("x_shape", x_shape), check_hidden(hidden)
        num_classes, latent_dim = check_size("num_classes", num_classes, 2), check_size("latent_dim", latent_dim)
        hidden = check_hidden(hidden)
        if not classifier_weight >= 0:
            raise ValueError(f"classifier_weight must be >= 0, got {classifier_weight}")
        super().__init__(x_shape=list(x_shape), num_classes=int(num_classes), latent_dim=int(latent_dim),
                         hidden=list(hidden), activation=activation, likelihood=likelihood,
                         classifier_weight=float(classifier_weight))
        self.x_shape, self.num_classes, self.latent_dim = x_shape, int(num_classes), int(latent_dim)
        self.classifier_weight = float(classifier_weight)
        C, D, numel = self.num_classes, self.latent_dim, math.prod(x_shape)
        self.likelihood = make_likelihood(likelihood, x_shape)
        self.classifier = MLP((numel,), hidden, (C,), activation)
        self.encoder = MLP((numel + C,), hidden, None, activation)
        self.q = DiagonalNormal(hidden[-1], D)
        self.decoder = MLP((D + C,), hidden[::-1], (self.likelihood.num_params * numel,), activation)
        self.register_buffer("_zero", torch.zeros(()), persistent=False)

    def labels(self, y, n):
        """(one-hot rows with zeros where unknown, boolean mask of the known ones)."""
        y = torch.full((n,), -1, device=self._zero.device) if y is None else torch.as_tensor(y, device=self._zero.device)
        known = y >= 0
        return F.one_hot(y.clamp(min=0).long(), self.num_classes).to(self._zero.dtype) * known[:, None], known

    def label_posterior(self, x, y=None):
        """The guide's q(y|x) as logits: the classifier's where the label is unknown, a point mass
        on the label where it is known."""
        e, known = self.labels(y, x.shape[0])
        logits = self.classifier(x.reshape(x.shape[0], -1))
        return torch.where(known[:, None], NEVER * (1 - e), logits)

    def decoder_params(self, z, e):
        return self.decoder(cat(z, e)).reshape(cat(z, e).shape[:-1] + (self.likelihood.num_params,) + self.x_shape)

    # -- p(y) p(z) p(x|y,z) and q(y|x) q(z|x,y) ---------------------------------------------------------
    def model(self, x, y=None):
        self.register()
        n, C = x.shape[0], self.num_classes
        e, known = self.labels(y, n)
        with pyro.plate("data", n):
            label = pyro.sample("y", dist.OneHotCategorical(logits=self._zero.expand(n, C)))
            z = pyro.sample("z", standard_normal(self._zero.expand(n, self.latent_dim), False))
            pyro.sample("x", self.likelihood(self.decoder_params(z, label)), obs=x)
            if self.classifier_weight and self.training and bool(known.any()):
                log_q = (F.log_softmax(self.classifier(x.reshape(n, -1)), -1) * e).sum(-1)
                pyro.factor("classify", self.classifier_weight * log_q * known)

    def guide(self, x, y=None):
        self.register()
        n = x.shape[0]
        with pyro.plate("data", n):
            label = pyro.sample("y", dist.OneHotCategorical(logits=self.label_posterior(x, y)),
                                infer={"enumerate": "parallel"})
            return pyro.sample("z", self.q(self.encoder(cat(x.reshape(n, -1), label))))

    # -- what users call directly -----------------------------------------------------------------------
    @torch.no_grad()
    def classify(self, x):
        """argmax_y q(y|x), one integer label per datapoint."""
        return self.classifier(x.reshape(x.shape[0], -1).to(self._zero.device)).argmax(-1)

    @torch.no_grad()
    def accuracy(self, x, y, batch_size: int = 1000) -> float:
        """The share of datapoints whose `classify` label is ``y``."""
        y = torch.as_tensor(y)
        right = sum(int((self.classify(x[s:s + batch_size]).cpu() == y[s:s + batch_size]).sum())
                    for s in range(0, x.shape[0], batch_size))
        return right / x.shape[0]

    @torch.no_grad()
    def decode(self, z, y):
        """E[x | y, z] for integer labels ``y``."""
        return self.likelihood.mean(self.decoder_params(z, self.labels(y, z.shape[0])[0]))

    @torch.no_grad()
    def sample(self, n: int, y=None, mean: bool = True):
        """n datapoints of class ``y`` (an int or one per datapoint; default: classes in turn)."""
        y = torch.arange(n) % self.num_classes if y is None else torch.as_tensor(y).expand(n)
        z = torch.randn(n, self.latent_dim, device=self._zero.device)
        params = self.decoder_params(z, self.labels(y, n)[0])
        return self.likelihood.mean(params) if mean else self.likelihood(params).sample()

    @torch.no_grad()
    def reconstruct(self, x, y=None):
        """E[x | y, z = E_q[z|x,y]], with y = argmax q(y|x) where no label is given."""
        e = self.labels(self.classify(x) if y is None else y, x.shape[0])[0]
        z = self.q(self.encoder(cat(x.reshape(x.shape[0], -1), e))).mean
        return self.likelihood.mean(self.decoder_params(z, e))
