r"""A procedural dataset with known factors of variation, shipped as code (dSprites-like).

White shapes on black 32x32 images, every combination of five factors once:

| factor | values |
|---|---|
| shape | square, ellipse (2:1), triangle |
| scale | 6 sizes, 0.5 to 1 |
| rotation | 6 angles in [0, pi/2) (distinct for every shape) |
| x, y | 8 positions each |

3 x 6 x 6 x 8 x 8 = 6,912 images, split 90/10 into train/test by a seeded permutation, so the
data are the same on every machine. ``pvae.load_dataset("shapes", split)`` returns them with
``data.factors`` (integer factor indices, shape (n, 5)) and ``data.factor_names``: what
disentanglement metrics ([`pvae.mig`][pvae.analysis.disentangle.mig]) need.
"""

from __future__ import annotations

import math

import torch

FACTORS = ("shape", "scale", "rotation", "x", "y")
SIZES = (3, 6, 6, 8, 8)
SHAPES = ("square", "ellipse", "triangle")
SIDE = 32
SEED = 2026


def factor_grid() -> torch.Tensor:
    """Every combination of factor indices, shape (6912, 5)."""
    axes = torch.meshgrid(*[torch.arange(s) for s in SIZES], indexing="ij")
    return torch.stack([a.reshape(-1) for a in axes], 1)


def render(factors: torch.Tensor, side: int = SIDE) -> torch.Tensor:
    """Images (n, 1, side, side) in {0, 1} for integer factor rows (n, 5)."""
    f = factors.long()
    scale = 0.5 + 0.5 * f[:, 1].double() / (SIZES[1] - 1)
    angle = f[:, 2].double() * (math.pi / 2) / SIZES[2]
    cx = 0.9 * (f[:, 3].double() / (SIZES[3] - 1) - 0.5)
    cy = 0.9 * (f[:, 4].double() / (SIZES[4] - 1) - 0.5)
    grid = (torch.arange(side, dtype=torch.float64) + 0.5) / side * 2 - 1
    py, px = torch.meshgrid(grid, grid, indexing="ij")
    dx, dy = px[None] - cx[:, None, None], py[None] - cy[:, None, None]
    cos, sin = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
    r = 0.38 * scale[:, None, None]
    u, v = (cos * dx + sin * dy) / r, (-sin * dx + cos * dy) / r  # the pixel in the shape's own frame
    square = torch.maximum(u.abs(), v.abs()) <= 1
    ellipse = u ** 2 + (v / 0.5) ** 2 <= 1
    triangle = torch.ones_like(square)
    for a in (math.pi / 2, math.pi / 2 + 2 * math.pi / 3, math.pi / 2 + 4 * math.pi / 3):  # three edges
        triangle &= -(u * math.cos(a) + v * math.sin(a)) <= 0.5
    which = f[:, 0][:, None, None]
    img = torch.where(which == 0, square, torch.where(which == 1, ellipse, triangle))
    return img.float().unsqueeze(1)


def load(split: str, seed: int = SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images, factor indices)`` of ``"train"`` (90%) or ``"test"`` (10%)."""
    if split not in ("train", "test"):
        raise ValueError(f"shapes has splits 'train' and 'test', not {split!r}")
    factors = factor_grid()
    perm = torch.randperm(len(factors), generator=torch.Generator().manual_seed(seed))
    cut = int(0.9 * len(factors))
    idx = perm[:cut] if split == "train" else perm[cut:]
    return render(factors[idx]), factors[idx]
