"""What every pvae model shares: its constructor config (for checkpoints) and a registry by
class name (for [`pvae.load`][pvae.load])."""

from __future__ import annotations

import itertools
import weakref

import pyro
import torch
from torch import nn

from pvae.util.tensors import device_of

MODELS: dict[str, type] = {}
_NAMES: "weakref.WeakKeyDictionary[nn.Module, str]" = weakref.WeakKeyDictionary()
_COUNT = itertools.count()


def _forget(name: str, keys: list) -> None:
    """Drop a collected model's entries from Pyro's param store (those still there)."""
    store = pyro.get_param_store()
    for key in keys:
        if key in store:
            del store[key]


class PyroVAE(nn.Module):
    """Base class of pvae's variants: an ``nn.Module`` with ``model(x)`` and ``guide(x)``.

    Parameters live in the module (plain ``nn.Parameter``s). ``model`` and ``guide`` begin with
    ``self.register()``, which is ``pyro.module(self.pyro_name, self)``: every parameter is a
    ``param`` site of both programs, so Pyro's own machinery (``SVI`` with ``pyro.optim``,
    ``Predictive``, ``poutine`` handlers, Pyro's ELBOs) trains and sees them exactly as
    [`pvae.fit`][pvae.fit] does. ``pyro_name`` is this instance's own (``"vae_0"``, ``"vae_1"``,
    ...; a copy gets a new one), so two models in one process never share parameters through the
    param store, and a model's entries leave the store when the model is collected.

    Subclasses call ``super().__init__(**config)`` with their JSON-able constructor arguments:
    that ``config`` is written into checkpoints and ``type(self)(**config)`` rebuilds the model in
    [`pvae.load`][pvae.load].
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

    @property
    def pyro_name(self) -> str:
        """This instance's name in Pyro's param store (its parameters are ``NAME$$$encoder...``)."""
        name = _NAMES.get(self)
        if name is None:
            name = _NAMES[self] = f"{type(self).__name__.lower()}_{next(_COUNT)}"
            keys = [f"{name}$$${n}" for n, p in self.named_parameters() if p.requires_grad]
            weakref.finalize(self, _forget, name, keys)
        return name

    def register(self) -> None:
        """``pyro.module(self.pyro_name, self)``: this model's parameters as ``param`` sites of the
        running program, so that plain Pyro ``SVI`` finds and trains them."""
        pyro.module(self.pyro_name, self)

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
