"""The IWAE paper's architectures (Burda et al. 2016, section 5), tanh units, Bernoulli output.

>>> m = pvae.preset("iwae-2layer")                 # doctest: +SKIP
>>> m = pvae.preset("iwae-1layer", guide="fullcov")  # doctest: +SKIP
"""

from __future__ import annotations

from pvae.models import VAE, HierarchicalVAE

PRESETS = {
    # 784-200-200-50: one stochastic layer of 50 units
    "iwae-1layer": (VAE, dict(x_shape=(784,), latent_dim=50, hidden=(200, 200), activation="tanh",
                              likelihood="bernoulli")),
    # 784-(200-200)-100-(100-100)-50: two stochastic layers
    "iwae-2layer": (HierarchicalVAE, dict(x_shape=(784,), latent_dims=(100, 50), hidden=((200, 200), (100, 100)),
                                          activation="tanh", likelihood="bernoulli")),
}


def preset(name: str, **overrides):
    """A fresh model of the preset ``name`` (see `PRESETS`), with keyword overrides."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    cls, config = PRESETS[name]
    return cls(**{**config, **overrides})
