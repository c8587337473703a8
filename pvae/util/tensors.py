"""Small facts about modules and tensors."""

from __future__ import annotations

import torch
from torch import nn


def resolve_device(device) -> torch.device:
    """The device a user named (None: CUDA where present, else the CPU), or one line saying why not."""
    try:
        device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    except (RuntimeError, TypeError):
        raise ValueError(f"device {device!r} is not a torch device; use 'cpu', 'cuda' or 'cuda:N'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but torch sees no CUDA device; use device='cpu'")
    return device


def eval_device(module: nn.Module, device=None) -> torch.device:
    """The device evaluation runs a module on: the one named (checked), which must hold the
    module's parameters, or theirs (None)."""
    if device is None:
        return device_of(module)
    device = resolve_device(device)
    has = next(module.parameters(), None)
    if has is not None and not _same_device(has.device, device):
        raise ValueError(f"the model's parameters are on {has.device}, but device={str(device)!r} was asked for: "
                         f"move the model first (model.to({str(device)!r})) or leave device=None")
    return device


def _same_device(a: torch.device, b: torch.device) -> bool:
    if a.type != b.type:
        return False
    if a.type != "cuda":
        return True
    cur = torch.cuda.current_device() if torch.cuda.is_available() else 0
    return (a.index if a.index is not None else cur) == (b.index if b.index is not None else cur)


def device_of(module: nn.Module) -> torch.device:
    """The device of a module's first parameter (CPU for a module without parameters)."""
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")
