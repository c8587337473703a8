"""Encoder and decoder blocks.

Every net here maps a tensor whose *last* dims are its input event shape to a tensor whose last
dims are its output shape, and broadcasts over any number of leading dims. That is what lets a
guide draw ``k`` particles at once: ``z`` arrives with shape ``(k, batch, latent_dim)`` and the
decoder returns ``(k, batch, *x_shape)`` without a Python loop.

- `MLP` -- fully connected, for any ``x_shape`` (it flattens).
- `ConvEncoder` / `ConvDecoder` -- for ``(C, 28, 28)`` and ``(C, 32, 32)`` images.
"""

from __future__ import annotations

import contextlib
import math
from typing import Sequence

import torch
from torch import nn

from pvae.util.denormals import set_flush_denormal
from pvae.util.memory import keep_buffers

ACTIVATIONS = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "softplus": nn.Softplus,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "identity": nn.Identity,  # linear nets (a linear autoencoder is PCA)
}


def activation(name: str) -> nn.Module:
    """The activation module called ``name`` (one of `ACTIVATIONS`)."""
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(
            f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}"
        ) from None


def apply_batched(net, x: torch.Tensor, in_shape: Sequence[int], out_shape: Sequence[int]):
    """Apply ``net`` (which expects ``(N, *in_shape)``) to ``x`` of shape ``(*batch, *in_shape)``."""
    in_shape, out_shape = tuple(in_shape), tuple(out_shape)
    batch = x.shape[: x.dim() - len(in_shape)]
    y = net(x.reshape((-1,) + in_shape))
    return y.reshape(batch + out_shape)


class Accelerated(nn.Module):
    """Mixin for the nets: optional mixed precision for the net's arithmetic (outputs back in
    float32, so every log-probability stays in float32), set by `accelerate`."""

    autocast_dtype: torch.dtype | None = None

    def run(self, fn, x):
        if self.autocast_dtype is None:
            return fn(x)
        with torch.autocast(device_type=x.device.type, dtype=self.autocast_dtype):
            return fn(x).float()


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@contextlib.contextmanager
def flush_denormals():
    """Denormal floats flushed to zero inside the block (CPU), the previous setting restored after:
    tiny values (late in training, AIS step sizes) otherwise slow CPU arithmetic many-fold. Every
    pvae computation on the CPU passes here, so it also fixes glibc's malloc thresholds for the
    process (`pvae.util.memory.keep_buffers`)."""
    keep_buffers()
    was = float(torch.tensor([1e-39]) * 1.0) == 0.0  # already flushing (torch has no getter)
    ok, _ = set_flush_denormal(True)  # on torch's worker threads too (see pvae.util.denormals)
    try:
        yield ok
    finally:
        if ok:
            set_flush_denormal(was)


def accelerate(module: nn.Module, precision: str = "fp32", compile: bool = False) -> nn.Module:
    """Switch every pvae net inside ``module`` to ``precision`` ("fp32", "bf16", "fp16": the nets'
    matrix products only; log-densities stay float32) and optionally ``torch.compile`` them in
    place (parameters and state_dict keys unchanged). Measured on 2 CPU cores, neither pays
    there (see benchmarks/README.md); both are meant for GPUs."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {list(PRECISIONS)}")
    for net in module.modules():
        if isinstance(net, Accelerated):
            net.autocast_dtype = PRECISIONS[precision]
            if compile:
                net.compile()
    return module


class MLP(Accelerated):
    """``in_shape -> hidden[0] -> ... -> hidden[-1] [-> out_shape]``, activation after each hidden layer.

    With ``out_shape=None`` the output is the last hidden layer (an encoder's features).
    """

    def __init__(self, in_shape, hidden: Sequence[int], out_shape=None, activation_name: str = "tanh"):
        super().__init__()
        self.in_shape = tuple(in_shape)
        self.out_shape = tuple(out_shape) if out_shape is not None else (hidden[-1],)
        layers, width = [], math.prod(self.in_shape)
        for h in hidden:
            layers += [nn.Linear(width, h), activation(activation_name)]
            width = h
        if out_shape is not None:
            layers.append(nn.Linear(width, math.prod(self.out_shape)))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        batch = x.shape[: x.dim() - len(self.in_shape)]
        y = self.run(self.net, x.reshape(batch + (-1,)))  # nn.Linear broadcasts over leading dims
        return y.reshape(batch + self.out_shape)


def _check_image_shape(x_shape):
    if len(x_shape) != 3 or x_shape[1:] not in ((28, 28), (32, 32)):
        raise ValueError(
            f"the conv nets take x_shape (C, 28, 28) or (C, 32, 32), got {tuple(x_shape)}; "
            "use net='mlp' for other shapes"
        )


class ConvEncoder(Accelerated):
    """``(C, H, W) -> features``: two stride-2 convs (H/4), then a linear layer to ``features``."""

    def __init__(self, x_shape, features: int = 256, channels=(32, 64), activation_name: str = "relu"):
        super().__init__()
        _check_image_shape(x_shape)
        self.x_shape = tuple(x_shape)
        self.out_shape = (features,)
        c, h, _ = x_shape
        c1, c2 = channels
        self.net = nn.Sequential(
            nn.Conv2d(c, c1, 4, stride=2, padding=1), activation(activation_name),
            nn.Conv2d(c1, c2, 4, stride=2, padding=1), activation(activation_name),
            nn.Flatten(),
            nn.Linear(c2 * (h // 4) ** 2, features), activation(activation_name),
        )

    def forward(self, x):
        return apply_batched(lambda v: self.run(self.net, v), x, self.x_shape, self.out_shape)


class ConvDecoder(Accelerated):
    """``z -> (params * C, H, W)``: a linear layer to ``(c2, H/4, W/4)``, two stride-2 transposed convs."""

    def __init__(self, latent_dim: int, x_shape, params_per_value: int = 1, channels=(64, 32),
                 activation_name: str = "relu"):
        super().__init__()
        _check_image_shape(x_shape)
        c, h, w = x_shape
        c2, c1 = channels
        self.latent_dim = latent_dim
        self.out_shape = (params_per_value * c, h, w)
        self.net = nn.Sequential(
            nn.Linear(latent_dim, c2 * (h // 4) * (w // 4)), activation(activation_name),
            nn.Unflatten(1, (c2, h // 4, w // 4)),
            nn.ConvTranspose2d(c2, c1, 4, stride=2, padding=1), activation(activation_name),
            nn.ConvTranspose2d(c1, params_per_value * c, 4, stride=2, padding=1),
        )

    def forward(self, z):
        return apply_batched(lambda v: self.run(self.net, v), z, (self.latent_dim,), self.out_shape)
