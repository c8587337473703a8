"""Run folders: one per run, never clobbered, never shared by two writers.

- A run folder is named by the user (``run_dir=``, ``--run-dir``) or, by default on the command
  line, made fresh with a timestamp (``runs/train-20261202-141503``), as Lightning and pythae do.
- A folder that already holds a run is refused unless the user says what to do with it:
  ``overwrite=True`` (``--overwrite``) deletes the earlier run's files first, ``resume=`` continues it.
- A lock file (``.pvae.lock``, holding the writer's process id) keeps a second process out while
  one writes; a lock left by a process that no longer runs is taken over.
- JSON files are written with non-finite numbers as ``null`` (``Infinity`` is not JSON), and read
  back with errors that name the damaged file.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

LOCK = ".pvae.lock"
#: files a run writes (figures aside): their presence marks a folder as holding a run
MARKERS = ("checkpoint.pt", "config.json", "results.json", "history.json", "compare.json")
#: what ``overwrite`` deletes: pvae's own outputs, never other files a user keeps there
OUTPUTS = MARKERS + ("best.pt", "data.json", "history.csv", "summary.md", "compare.md", "compare.csv", "bdmc.json",
                     "anomaly.json", "denoise.json", "inpaint.json")


def fresh(kind: str, root="runs") -> Path:
    """A new folder name ``root/kind-YYYYmmdd-HHMMSS`` (with ``-2``, ``-3`` ... if taken)."""
    base = Path(root) / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, i = base, 1
    while path.exists():
        i += 1
        path = base.with_name(f"{base.name}-{i}")
    return path


def holds_run(path) -> bool:
    path = Path(path)
    return path.is_dir() and any((path / m).exists() for m in MARKERS)


def clear(path) -> None:
    """Delete an earlier run's outputs (its files, figures and evaluation folders) from ``path``."""
    path = Path(path)
    for f in path.iterdir():
        if f.name in OUTPUTS or f.suffix == ".png" and f.is_file() or f.name.startswith(("eval-", "bdmc_")) \
                or f.is_dir() and holds_run(f):  # eval folders, compare's runs
            shutil.rmtree(f) if f.is_dir() else f.unlink()


def prepare(run_dir, *, overwrite: bool = False, resume=None) -> Path:
    """Check that ``run_dir`` can take this run and create it: a folder name (not empty, not a
    file, writable), and free of an earlier run unless ``overwrite`` (its outputs are deleted) or
    ``resume`` names that run (training continues it in place)."""
    if run_dir is None or str(run_dir).strip() == "":
        raise ValueError("run_dir must name a folder, got an empty string")
    path = Path(run_dir)
    if path.exists() and not path.is_dir():
        raise ValueError(f"run folder {path} is a file, not a folder: choose another run_dir")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ValueError(f"cannot create run folder {path}: a part of that path is a file") from None
    except PermissionError:
        raise ValueError(f"cannot create run folder {path}: permission denied") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write to run folder {path}: permission denied (read-only)")
    continuing = resume is not None and Path(resume).resolve() in (path.resolve(), (path / "checkpoint.pt").resolve())
    if holds_run(path) and not continuing:
        if not overwrite:
            raise ValueError(f"run folder {path} already holds a run: pass overwrite=True (--overwrite) to replace "
                             f"it, resume it (--resume {path}), or choose another run_dir")
        clear(path)
    return path


class RunLock:
    """``with RunLock(run_dir):`` — the folder is this process's until the block ends.

    Re-entrant within one process (the CLI holds the lock around training and the report);
    another live process holding it is an error naming its process id.
    """

    _held: dict = {}

    def __init__(self, run_dir):
        self.path = Path(run_dir) / LOCK

    def __enter__(self):
        key = str(self.path.resolve())
        if key in RunLock._held:
            RunLock._held[key] += 1
            return self
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                owner = _owner(self.path)
                if owner is not None and owner != os.getpid() and _alive(owner):
                    raise ValueError(f"run folder {self.path.parent} is in use by another pvae process (pid {owner}): "
                                     "wait for it to finish or choose another run_dir") from None
                if owner is None and _age(self.path) < 2.0:  # just created: its owner is writing its pid now
                    time.sleep(0.02)
                    continue
                self.path.unlink(missing_ok=True)  # left by a process that no longer runs
                continue
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            RunLock._held[key] = 1
            return self

    def __exit__(self, *exc):
        key = str(self.path.resolve())
        RunLock._held[key] -= 1
        if not RunLock._held[key]:
            del RunLock._held[key]
            self.path.unlink(missing_ok=True)
        return False


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return 0.0


def _owner(path: Path):
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
