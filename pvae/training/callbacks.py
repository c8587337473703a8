"""Callbacks: ``pvae.fit(..., callbacks=[cb])`` calls ``cb(record, history)`` after every epoch.

``record`` is that epoch's dict (``epoch``, ``train_loss``, ``test_elbo``, ``seconds``,
``kl_scale``, ``best``), ``history`` the [`pvae.training.history.History`][pvae.training.history.History] so far. Any callable works;
`TensorBoard` writes the numbers where TensorBoard reads them.
"""

from __future__ import annotations

import math


def checked(callbacks) -> tuple:
    """The callbacks as a tuple, each callable (a bad one is named before any training)."""
    if callable(callbacks):
        callbacks = (callbacks,)
    if isinstance(callbacks, (str, bytes)) or not hasattr(callbacks, "__iter__"):
        raise TypeError(f"callbacks must be a list of callables cb(record, history), got {type(callbacks).__name__}")
    callbacks = tuple(callbacks)
    for i, cb in enumerate(callbacks):
        if not callable(cb):
            raise TypeError(f"callbacks[{i}] is a {type(cb).__name__}, not a callable cb(record, history)")
    return callbacks


class TensorBoard:
    """Log every numeric field of each epoch's record as a scalar ``pvae/FIELD`` at that epoch,
    through ``torch.utils.tensorboard`` (which needs ``pip install tensorboard``)::

        h = pvae.fit(m, train, test=test, callbacks=[pvae.training.callbacks.TensorBoard("runs/tb")])
        # then: tensorboard --logdir runs/tb
    """

    def __init__(self, log_dir):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ImportError("TensorBoard logging needs the tensorboard package: pip install tensorboard") from None
        self.writer = SummaryWriter(str(log_dir))

    def __call__(self, record: dict, history) -> None:
        for key, value in record.items():
            if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool) \
                    and math.isfinite(value):
                self.writer.add_scalar(f"pvae/{key}", value, record["epoch"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
