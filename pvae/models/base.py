"""What every pvae model shares: its constructor config (for checkpoints) and a registry by
class name (for [`pvae.load`][pvae.load])."""

from __future__ import annotations

import torch
from torch import nn

from ..pair import device_of

MODELS: dict[str, type] = {}


class PyroVAE(nn.Module):
    """Base class of pvae's variants: an ``nn.Module`` with ``model(x)`` and ``guide(x)``.

    Parameters live in the module (plain ``nn.Parameter``s, never Pyro's global param store),
    so two models in one process never share them. Subclasses call ``super().__init__(**config)``
    with their JSON-able constructor arguments: that ``config`` is written into checkpoints and
    ``type(self)(**config)`` rebuilds the model in [`pvae.load`][pvae.load].
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        MODELS[cls.__name__] = cls

    def __init__(self, **config):
        super().__init__()
        self.config = dict(config)

    @property
    def device(self) -> torch.device:
        return device_of(self)

    @torch.no_grad()
    def decode(self, z):
        """E[x|z], shape ``(*z.shape[:-1], *x_shape)``, for models with ``decoder_params(z)``."""
        return self.likelihood.mean(self.decoder_params(z))

    @torch.no_grad()
    def reconstruct(self, x):
        """E[x | z = encode(x)]."""
        return self.decode(self.encode(x))

    def model(self, x=None, **kwargs):  # pragma: no cover - abstract
        raise NotImplementedError

    def guide(self, x, **kwargs):  # pragma: no cover - abstract
        raise NotImplementedError
