"""pvae: variational autoencoders as Pyro model/guide pairs.

>>> import pvae
>>> m = pvae.VAE(x_shape=(784,), latent_dim=50, hidden=(200, 200), activation="tanh",
...              likelihood="bernoulli", guide="diagonal")
>>> h = pvae.fit(m, train, objective="iwae", k=5, epochs=10, test=test)   # doctest: +SKIP
>>> ll = pvae.log_likelihood(m, test, k=5000)                              # doctest: +SKIP
"""

from pvae.analysis.applications import anomaly_scores, auroc, corrupt, inpaint
from pvae.analysis.disentangle import mig
from pvae.analysis.evaluation import active_units, evaluate, posterior_means, psis_khat
from pvae.analysis.report import report
from pvae.analysis.samplers import fit_sampler
from pvae.data.datasets import Data, load_dataset
from pvae.infer.bdmc import bdmc
from pvae.infer.handlers import scale_latents
from pvae.infer.importance import ess, log_likelihood
from pvae.infer.iwae import (
    CombinationIWAE,
    ImportanceWeightedELBO,
    MultiImportanceWeightedELBO,
)
from pvae.infer.objectives import objective
from pvae.infer.pair import ModelGuide
from pvae.infer.program import log_weight_terms
from pvae.infer.renyi import PyroRenyiELBO
from pvae.infer.surrogate import DReGIWAE, PartialIWAE, StickingTheLandingELBO
from pvae.models import (
    AE,
    MODELS,
    VAE,
    VQVAE,
    ConditionalVAE,
    GumbelSoftmaxVAE,
    HierarchicalVAE,
    PyroVAE,
    SemiSupervisedVAE,
    StructuredCVAE,
)
from pvae.models.presets import PRESETS, preset
from pvae.nn.priors import aggregate_kl
from pvae.training import callbacks
from pvae.training.checkpoint import load, load_checkpoint, save_checkpoint
from pvae.training.code_prior import fit_code_prior
from pvae.training.compare import compare
from pvae.training.fit import fit
from pvae.training.history import History

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
    # pvae.plots (pvae.analysis.plots) on first use: matplotlib is not imported with pvae
    if name == "plots":
        import importlib

        return importlib.import_module(".analysis.plots", __name__)
    raise AttributeError(f"module 'pvae' has no attribute {name!r}")
