"""Effect handlers pvae applies to any model/guide pair."""

from __future__ import annotations

from pyro.poutine.messenger import Messenger


class ScaleLatentsMessenger(Messenger):
    """Multiply the log-density of every *latent* (unobserved) sample site by ``scale``.

    Applied to both the model and the guide it turns the ELBO into
    E_q[log p(x|z)] - scale * KL(q(z|x) || p(z)): beta-VAE (scale = beta) and KL warm-up
    (scale rising linearly to 1). Observed sites are left alone.
    """

    def __init__(self, scale: float):
        if not scale > 0:
            raise ValueError(f"a latent scale must be > 0, got {scale}")
        super().__init__()
        self.scale = scale

    def _process_message(self, msg):
        if msg["type"] == "sample" and not msg["is_observed"]:
            msg["scale"] = self.scale * msg["scale"]


def scale_latents(fn=None, scale: float = 1.0):
    """``poutine``-style handler: ``scale_latents(model, 0.1)`` or ``with scale_latents(scale=0.1):``."""
    msngr = ScaleLatentsMessenger(scale)
    return msngr(fn) if fn is not None else msngr
