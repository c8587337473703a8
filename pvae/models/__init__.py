"""pvae's model variants, one file each."""

from pvae.models.ae import AE
from pvae.models.base import MODELS, PyroVAE
from pvae.models.cvae import ConditionalVAE
from pvae.models.discrete import GumbelSoftmaxVAE
from pvae.models.hierarchical import HierarchicalVAE
from pvae.models.m2 import SemiSupervisedVAE
from pvae.models.structured import StructuredCVAE
from pvae.models.vae import VAE
from pvae.models.vqvae import VQVAE

__all__ = ["MODELS", "PyroVAE", "VAE", "HierarchicalVAE", "ConditionalVAE", "AE", "VQVAE", "StructuredCVAE", "SemiSupervisedVAE", "GumbelSoftmaxVAE"]
