r"""Dynamic binarization's draws: x_b ~ Bernoulli(x) for a batch of grey images, from a counter-based
generator, so that the compiled training step can draw them inside its graph.

The generator is SplitMix64 (Steele, Lea & Flood 2014; Vigna's ``splitmix64.c``): its state
advances by the constant gamma = 0x9E3779B97F4A7C15 and each output is a bijective mix of the state,

    s_c = seed + (c + 1) * gamma  (mod 2^64),    u_c = mix(s_c) / 2^64,

so draw c is a pure function of (seed, c): any element of the stream is computed without the ones
before it (the property XLA's and JAX's counter-based generators have). The stream passes BigCrush,
its period is 2^64, and every element of a batch is one vectorized expression that inductor fuses
into the step's first kernel. A pixel is 1 where the top 24 bits of its draw, as a uniform in
[0, 1), fall below its grey value (torch's float32 ``rand`` has 24 bits too).

Arithmetic is on int64 tensors, which hold the uint64 values in two's complement: products wrap
modulo 2^64, and right shifts are masked so that they are logical shifts.

`DynamicDraws` keeps a training run's stream: a seed per epoch from torch's generator (seeded by
``fit``'s ``seed``, saved in checkpoints, one stream per process) and a counter that is the
element's position in the epoch, so a run draws no value twice and a resumed run draws what the
uninterrupted run would have.
"""

from __future__ import annotations

import math

import torch

GAMMA = 0x9E3779B97F4A7C15
MIX1 = 0xBF58476D1CE4E5B9
MIX2 = 0x94D049BB133111EB
_MASK = (1 << 64) - 1


def signed(value: int) -> int:
    """A uint64 (any Python int, reduced modulo 2^64) as the int64 with the same bits."""
    value &= _MASK
    return value - (1 << 64) if value >= 1 << 63 else value


def _shift(z: torch.Tensor, bits: int) -> torch.Tensor:
    """The logical right shift of uint64 values held as int64."""
    return (z >> bits) & ((1 << (64 - bits)) - 1)


def mix(state: torch.Tensor) -> torch.Tensor:
    """SplitMix64's output function, elementwise on int64 states."""
    z = (state ^ _shift(state, 30)) * signed(MIX1)
    z = (z ^ _shift(z, 27)) * signed(MIX2)
    return z ^ _shift(z, 31)


def _steps(shape, device) -> torch.Tensor:
    """c * gamma (mod 2^64) for each element c of ``shape``, row-major: its state's offset from element 0's."""
    return torch.arange(math.prod(shape), device=device, dtype=torch.int64).view(shape) * signed(GAMMA)


def uniform(shape, start: torch.Tensor) -> torch.Tensor:
    """float32 uniforms in [0, 1) of ``shape`` (24 bits each), element c (row-major) from the state
    ``start + c * gamma``; ``start`` is a 0-dim int64 tensor, the state of element 0."""
    return _shift(mix(start + _steps(shape, start.device)), 40).to(torch.float32) * (2.0 ** -24)


def bernoulli(p: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """x_b ~ Bernoulli(p), elementwise, in ``p``'s dtype: 1 where the element's uniform is below p."""
    return (uniform(p.shape, start) < p).to(p.dtype)


def state_at(seed: int, counter: int) -> int:
    """The state of draw ``counter`` of the stream ``seed`` (both Python ints), as an int64 value."""
    return signed(seed + (counter + 1) * GAMMA)


class DynamicDraws:
    """A training run's binarization stream. ``new_epoch()`` takes the epoch's seed from torch's
    generator; ``at(step, elements_per_step, x)`` sets ``start`` (a 0-dim int64 tensor on ``device``,
    filled in place: no host-to-device copy, and a captured CUDA graph reads it where it is) to the
    state of the step's first element; ``__call__(x)`` draws the batch eagerly. The compiled step
    draws inside its graph from the same ``start``: the same values. ``x`` is the grey batch the
    step is about to take (the compiled step finds it among its inputs)."""

    def __init__(self, device):
        self.start = torch.zeros((), dtype=torch.int64, device=device)
        self.seed, self.x = 0, None
        self._counters: dict = {}  # shape -> c * gamma, kept: the eager draw is then 10 in-place ops

    def new_epoch(self) -> None:
        self.seed = int(torch.randint(-(1 << 63), (1 << 63) - 1, (), dtype=torch.int64))

    def at(self, step: int, elements_per_step: int, x: torch.Tensor) -> None:
        self.start.fill_(state_at(self.seed, step * elements_per_step))
        self.x = x

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """`bernoulli` (``x``, ``start``), computed in place on one buffer (faster than torch's ``rand_like``
        and a comparison on the CPU; the compiled step's graph fuses `bernoulli` itself)."""
        key = (tuple(x.shape), x.device)
        if key not in self._counters:
            self._counters[key] = _steps(x.shape, x.device)
        z = self._counters[key] + self.start
        t = torch.empty_like(z)
        for bits, factor in ((30, signed(MIX1)), (27, signed(MIX2)), (31, None)):
            torch.bitwise_right_shift(z, bits, out=t)
            z ^= t.bitwise_and_((1 << (64 - bits)) - 1)
            if factor is not None:
                z *= factor
        u = z.bitwise_right_shift_(40).bitwise_and_((1 << 24) - 1).to(torch.float32).mul_(2.0 ** -24)
        return (u < x).to(x.dtype)
