"""pvae's model variants, one file each."""

from .base import MODELS, PyroVAE
from .ae import AE
from .cvae import ConditionalVAE
from .discrete import GumbelSoftmaxVAE
from .hierarchical import HierarchicalVAE
from .m2 import SemiSupervisedVAE
from .structured import StructuredCVAE
from .vae import VAE
from .vqvae import VQVAE

__all__ = ["MODELS", "PyroVAE", "VAE", "HierarchicalVAE", "ConditionalVAE", "AE", "VQVAE", "StructuredCVAE", "SemiSupervisedVAE", "GumbelSoftmaxVAE"]
