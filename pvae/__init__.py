"""pvae: variational autoencoders as Pyro model/guide pairs.

>>> import pvae
>>> m = pvae.VAE(x_shape=(784,), latent_dim=50, hidden=(200, 200), activation="tanh",
...              likelihood="bernoulli", guide="diagonal")
>>> h = pvae.fit(m, train, objective="iwae", k=5, epochs=10, test=test)   # doctest: +SKIP
>>> ll = pvae.log_likelihood(m, test, k=5000)                              # doctest: +SKIP
"""

from . import callbacks
from .ais import bdmc
from .applications import anomaly_scores, auroc, corrupt, inpaint
from .checkpoint import load, load_checkpoint, save_checkpoint
from .code_prior import fit_code_prior
from .compare import compare
from .data import Data, load_dataset
from .disentangle import mig
from .evaluate import active_units, ess, evaluate, log_likelihood, posterior_means, psis_khat
from .handlers import scale_latents
from .models import AE, MODELS, GumbelSoftmaxVAE, VAE, VQVAE, ConditionalVAE, HierarchicalVAE, PyroVAE, SemiSupervisedVAE, StructuredCVAE
from .objectives import (CombinationIWAE, DReGIWAE, ImportanceWeightedELBO, MultiImportanceWeightedELBO,
                         PartialIWAE, PyroRenyiELBO, StickingTheLandingELBO, log_weight_terms, objective)
from .pair import ModelGuide
from .presets import PRESETS, preset
from .priors import aggregate_kl
from .report import report
from .samplers import fit_sampler
from .train import History, fit

__version__ = "0.1.0"

__all__ = [
    "VAE", "HierarchicalVAE", "ConditionalVAE", "StructuredCVAE", "SemiSupervisedVAE", "GumbelSoftmaxVAE", "AE", "VQVAE", "preset", "PRESETS", "PyroVAE", "MODELS", "ModelGuide",
    "fit", "History", "compare", "objective", "ImportanceWeightedELBO", "MultiImportanceWeightedELBO", "CombinationIWAE",
    "DReGIWAE", "StickingTheLandingELBO", "PartialIWAE", "PyroRenyiELBO", "log_weight_terms", "scale_latents",
    "log_likelihood", "bdmc", "evaluate", "active_units", "posterior_means", "ess", "psis_khat",
    "anomaly_scores", "auroc", "corrupt", "inpaint",
    "load", "load_checkpoint", "save_checkpoint", "Data", "load_dataset", "report", "callbacks",
    "fit_code_prior", "fit_sampler", "mig", "aggregate_kl",
]


def __getattr__(name):
    # pvae.plots on first use: matplotlib is not imported with pvae
    if name == "plots":
        import importlib

        return importlib.import_module(".plots", __name__)
    raise AttributeError(f"module 'pvae' has no attribute {name!r}")
