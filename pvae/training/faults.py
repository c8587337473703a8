"""What a non-finite loss, gradient or parameter does to a training run (`pvae.fit`'s
``on_nonfinite``): stop with a one-line ``FloatingPointError`` that says which checkpoint is kept,
or skip the batch and halve the learning rate."""

from __future__ import annotations

import torch

from pvae.training.distributed import all_true
from pvae.util.progress import say


def nonfinite_params(pair, extra: dict) -> list:
    """The names of the parameters (module and param store) holding a NaN or inf."""
    named = list(pair.named_parameters()) + list(extra.items())
    return [name for name, p in named if not bool(torch.isfinite(p).all())]


class FaultPolicy:
    """What a non-finite loss or gradient does: ``"stop"`` raises a ``FloatingPointError`` naming
    the epoch and step, ``"skip"`` drops the batch and halves the learning rate (10 in a row stop).

    On the CPU (and whenever ranks must agree) the check runs before every optimizer step, so the
    parameters never see a bad gradient; with ``deferred=True`` (a single GPU) the first bad step
    is kept on the device and read every 50 steps and at the end of the epoch: no host sync per step.
    """

    def __init__(self, mode: str, ctx, deferred: bool):
        self.mode, self.ctx, self.deferred = mode, ctx, deferred
        self.skipped_in_a_row = 0
        self.first_bad = None
        self.saved = None  # (path, epoch) of the last checkpoint written or resumed from

    def kept(self) -> str:
        """What is true of the checkpoints after a fault."""
        if self.saved is None:
            return "no checkpoint was written (run_dir=None)"
        path, epoch = self.saved
        if epoch == 0:
            return f"no epoch finished, so {path.parent} holds no checkpoint"
        return f"the last good checkpoint (epoch {epoch}) in {path.parent} is kept"

    def _fail(self, epoch, step, what="non-finite loss or gradient"):
        raise FloatingPointError(f"{what} at epoch {epoch + 1}, step {step}; {self.kept()}")

    def start_epoch(self, device):
        self.first_bad = torch.full((), -1, device=device, dtype=torch.long)

    def allows_step(self, finite: torch.Tensor, optimizer, epoch: int, step: int) -> bool:
        """True to take the optimizer step; False to skip this batch (or to end a deferred epoch)."""
        if self.deferred:
            self.first_bad = torch.where((self.first_bad < 0) & ~finite, step + 1, self.first_bad)
            return not (step % 50 == 49 and int(self.first_bad) >= 0)
        if all_true(finite, self.ctx):
            self.skipped_in_a_row = 0
            return True
        if self.mode == "stop":
            self._fail(epoch, step + 1)
        self.skipped_in_a_row += 1
        for group in optimizer.param_groups:
            group["lr"] *= 0.5
        if self.ctx.main:
            say(f"epoch {epoch + 1}, step {step + 1}: non-finite loss or gradient, batch skipped, lr halved "
                       f"to {optimizer.param_groups[0]['lr']:.3g}")
        if self.skipped_in_a_row >= 10:
            self._fail(epoch, step + 1, "10 non-finite steps in a row")
        return False

    def end_epoch(self, epoch: int):
        if self.deferred and int(self.first_bad) >= 0:
            self._fail(epoch, int(self.first_bad))
