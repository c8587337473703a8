"""The settings of a training run, as one object: what [`pvae.fit`][pvae.fit] takes besides the model,
the data and where things go. `fit` builds one from its keywords (and checks it there), the run's
``config.json`` and checkpoints record it (`FitSettings.config`), and ``resume`` compares a run's
record with the settings given (`FitSettings.check_resume`)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from pvae.training.optim import check_optimizer, check_scheduler, optimizer_name
from pvae.util.validate import check_number, check_positive_int

#: the settings a resumed run must share with the run it continues
RESUMED = ("objective", "k", "alpha", "batch_size", "lr", "seed", "warmup_epochs", "clip_grad", "optimizer",
           "optimizer_args", "scheduler", "scheduler_args", "validation", "early_stopping")


@dataclass(frozen=True)
class FitSettings:
    """How a run trains (see [`pvae.fit`][pvae.fit] for each field). Checked when made: a bad value is
    one ``ValueError`` (or ``TypeError``) naming it."""

    # the objective
    objective: Any = "elbo"
    k: int = 1
    alpha: float = 0.5
    # optimisation
    epochs: int = 10
    batch_size: int = 100
    lr: float = 1e-3
    seed: int = 0
    warmup_epochs: float = 0
    clip_grad: float | None = None
    on_nonfinite: str = "stop"
    optimizer: Any = "adam"
    optimizer_args: dict | None = None
    scheduler: Any = None
    scheduler_args: dict | None = None
    # held-out data
    validation: Any = None
    early_stopping: int | None = None
    # how the step runs
    precision: str = "fp32"
    compile: bool | str = "auto"
    flush_denormal: bool = True
    validate: bool = False
    data_plate: str | None = None
    # what the run keeps and reports
    keep_best: bool = True
    eval_k: int | None = None
    progress: bool = True

    def __post_init__(self):
        objective = self.objective
        if not isinstance(objective, str) and not (hasattr(objective, "loss") and hasattr(objective, "num_particles")):
            raise TypeError(f"objective must be a name such as 'elbo' or 'iwae:k=50', or a Pyro ELBO instance; got "
                            f"{type(objective).__name__} {objective!r}")
        check_positive_int("epochs", self.epochs, minimum=0)
        check_positive_int("batch_size", self.batch_size)
        check_positive_int("seed", self.seed, minimum=0)
        check_number("lr", self.lr, low=0, open_low=True)
        check_number("warmup_epochs", self.warmup_epochs, low=0)
        check_number("clip_grad", self.clip_grad, low=0, open_low=True, allow_none=True)
        if self.on_nonfinite not in ("stop", "skip"):
            raise ValueError(f"on_nonfinite must be 'stop' or 'skip', got {self.on_nonfinite!r}")
        if self.eval_k is not None:
            check_positive_int("eval_k", self.eval_k)
        check_optimizer(self.optimizer, self.optimizer_args)
        check_scheduler(self.scheduler, self.scheduler_args)
        if isinstance(self.validation, float) and not 0 < self.validation < 1:
            raise ValueError(f"validation must be a fraction of the training data in (0, 1) or held-out data, "
                             f"got {self.validation!r}")
        if self.early_stopping is not None:
            check_positive_int("early_stopping (epochs without improvement)", self.early_stopping)
        if self.compile not in (False, True, "step", "auto"):
            raise ValueError(f"compile must be 'auto', 'step' (the whole step), False or True (the nets), "
                             f"got {self.compile!r}")

    @classmethod
    def fields(cls) -> tuple:
        return tuple(f.name for f in dataclasses.fields(cls))

    def replace(self, **changes) -> FitSettings:
        return dataclasses.replace(self, **changes)

    def config(self, *, k: int, device, n_train: int, n_test: int | None, processes: int, data_plate: str,
               vectorized: bool) -> dict:
        """The ``"fit"`` record of config.json and of every checkpoint: these settings (the objective
        by name) plus what the run found (the objective's particles, device, data sizes, processes,
        data plate, particle mode)."""
        validation = self.validation if self.validation is None or isinstance(self.validation, float) else "data"
        record = {"objective": self.objective if isinstance(self.objective, str) else type(self.objective).__name__,
                  "k": k, "alpha": self.alpha, "epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr,
                  "seed": self.seed, "device": str(device), "warmup_epochs": self.warmup_epochs, "n_train": n_train,
                  "n_test": n_test, "clip_grad": self.clip_grad, "on_nonfinite": self.on_nonfinite,
                  "processes": processes, "precision": self.precision, "compile": self.compile,
                  "data_plate": data_plate, "vectorized_particles": vectorized,
                  "optimizer": optimizer_name(self.optimizer), "optimizer_args": self.optimizer_args,
                  "scheduler": None if self.scheduler is None else optimizer_name(self.scheduler),
                  "scheduler_args": self.scheduler_args, "validation": validation,
                  "early_stopping": self.early_stopping}
        return json.loads(json.dumps(record, default=str))  # as config.json reads back (tuples as lists)

    @staticmethod
    def check_resume(saved: dict, given: dict, path) -> None:
        """Resuming continues a run as it was configured: a setting of `RESUMED` that differs from the
        run's record is an error naming it."""
        for key in RESUMED:
            if key in saved and saved[key] != given[key] and not (key == "alpha" and "renyi" not in str(given["objective"])):
                raise ValueError(f"resume: {key}={given[key]!r} differs from the run's {key}={saved[key]!r} in {path}; "
                                 f"pass {key}={saved[key]!r} to continue it, or start a new run to change it")
