"""The record a training run returns: one dict per epoch."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from pvae.util.files import write_text


class History(list):
    """Per-epoch records (dicts: ``epoch``, ``train_loss``, ``test_elbo``, ``seconds``, ...).

    ``history.model`` is the trained module, ``history.run_dir`` where its files went,
    ``history.program`` what tracing the program found ([`pvae.infer.sites.Program`][pvae.infer.sites.Program]) and
    ``history.notes`` what a user should hear of it (labels not passed, global latents held at
    their guide mean, training scales left out of evaluation, sequential particles).
    """

    model = None
    run_dir = None
    program = None
    notes: list = []

    def column(self, key):
        return [r.get(key) for r in self]

    def to_csv(self) -> str:
        keys = list(dict.fromkeys(k for r in self for k in r))
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=keys)
        w.writeheader()
        w.writerows(self)
        return buf.getvalue()

    def save(self, run_dir) -> None:
        run_dir = Path(run_dir)
        write_text(run_dir / "history.json", json.dumps(list(self), indent=1))
        write_text(run_dir / "history.csv", self.to_csv())
