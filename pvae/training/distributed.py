"""Data-parallel training with ``torch.distributed``: gloo on CPU, NCCL on GPU.

Launched as ``torchrun --nproc_per_node N -m pvae train ...`` (or any script calling
[`pvae.fit`][pvae.fit] under torchrun), each of the N processes holds a replica of the model and
``pvae.fit`` notices the ``WORLD_SIZE`` torchrun sets:

- ``batch_size`` is the *global* batch: every step draws one seeded permutation slice, identical
  on all ranks, and rank r takes its every N-th datapoint (the distributed sampler, reseeded each
  epoch by the shared permutation generator);
- each rank draws its particles from its own stream (seed + rank);
- the loss is wrapped in `DistributedDataParallel`, whose all-reduce
  averages gradients over ranks; the per-rank loss is multiplied by N, so one step equals a
  single-process step on the concatenated batch;
- logging, test evaluation, figures and checkpoints happen on rank 0 only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class Context:
    rank: int = 0
    world: int = 1

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def launched() -> bool:
    """True inside a torchrun launch of more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 or (dist.is_available() and dist.is_initialized()
                                                           and dist.get_world_size() > 1)


def setup(device: torch.device) -> tuple[Context, torch.device]:
    """Join (or create) the process group; on GPUs each rank takes cuda:LOCAL_RANK."""
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return Context(dist.get_rank(), dist.get_world_size()), device


class Objective(nn.Module):
    """The loss as a module's forward, so that DistributedDataParallel can hook its backward."""

    def __init__(self, pair: nn.Module, elbo, scale: float = 1.0):
        super().__init__()
        self.pair, self.elbo, self.scale = pair, elbo, scale

    def forward(self, *args, **kwargs):
        return self.scale * self.elbo.differentiable_loss(self.pair.model, self.pair.guide, *args, **kwargs)


def wrap(pair: nn.Module, elbo, ctx: Context, device: torch.device):
    """The loss module: plain, or DDP-wrapped when training on several ranks."""
    objective = Objective(pair, elbo, scale=float(ctx.world))
    if not ctx.active:
        return objective
    return nn.parallel.DistributedDataParallel(objective, device_ids=[device] if device.type == "cuda" else None)


def all_true(flag: torch.Tensor, ctx: Context) -> bool:
    """Whether ``flag`` holds on every rank (so that all ranks stop or skip together)."""
    if ctx.active:
        flag = flag.to(torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag)


def sum_all(t: torch.Tensor, ctx: Context) -> torch.Tensor:
    if ctx.active:
        t = t.clone()
        dist.all_reduce(t)
    return t
