"""Run folders: one per run, never clobbered, never shared by two writers.

- A run folder is named by the user (``run_dir=``, ``--run-dir``) or, by default on the command
  line, made fresh with a timestamp (``runs/train-20261202-141503``), as Lightning and pythae do.
- A folder that already holds a run is refused unless the user says what to do with it:
  ``overwrite=True`` (``--overwrite``) deletes the earlier run's files first, ``resume=`` continues it.
- One owner per folder: a manifest (``.pvae-files``) names the command that made the folder
  (train, eval, compare) and every file pvae wrote there. ``overwrite`` replaces only a folder of
  the same command and removes only what the manifest lists: a user's notes, figures and nested
  folders stay. Other commands write new files only (``pvae.util.files.new_path``).
- A lock file (``.pvae.lock``, holding the writer's process id) keeps a second process out while
  one writes; a lock left by a process that no longer runs is taken over.
- JSON files are written with non-finite numbers as ``null`` (``Infinity`` is not JSON), and read
  back with errors that name the damaged file.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from pvae.util.files import MANIFEST, manifest, note_written, start_manifest

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


#: the figures a run writes (for folders from before manifests)
FIGURES = ("reconstructions", "completions", "samples", "latent_space", "interpolation", "latent_map", "traversal",
           "khat", "training_curves", "learning_curves", "log_px")


def owner(path) -> str | None:
    """The pvae command that made the run folder ``path`` (train, eval, compare), or None."""
    listed = manifest(path)
    if listed is not None and listed[0]:
        return listed[0]
    path = Path(path)
    if (path / "compare.json").exists():
        return "compare"
    if (path / "checkpoint.pt").exists() or (path / "config.json").exists() or (path / "history.json").exists():
        return "train"
    return "eval" if (path / "results.json").exists() else None


def clear(path) -> None:
    """Delete what pvae wrote for the earlier run in ``path`` (its manifest's files and folders,
    each folder cleared the same way); nothing else. A folder from before manifests loses its
    known output names only."""
    path = Path(path)
    listed = manifest(path)
    names = listed[1] if listed is not None else set(OUTPUTS) | {f"{f}.png" for f in FIGURES}
    for name in names:
        f = path / name.rstrip("/")
        if f.is_symlink() or f.is_file():
            f.unlink()
        elif f.is_dir() and name.endswith("/") and manifest(f) is not None:  # a folder pvae made: its own files only
            clear(f)
            (f / MANIFEST).unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                f.rmdir()  # kept where the user put something of their own there


def _claim(path: Path, kind: str, created: bool) -> None:
    """Start ``path``'s manifest (where it has none) and list a folder pvae created in its parent's."""
    if manifest(path) is None:
        start_manifest(path, kind)
        for name in (*OUTPUTS, *(f"{f}.png" for f in FIGURES)) if holds_run(path) else ():  # a run from before manifests
            if (path / name).is_file():
                note_written(path / name)
    if created:
        note_written(path)


def prepare(run_dir, *, overwrite: bool = False, resume=None, kind: str = "train") -> Path:
    """Check that ``run_dir`` can take this run and create it: a folder name (not empty, not a
    file, writable), and free of an earlier run unless ``overwrite`` (the outputs pvae wrote there
    are deleted; only for a folder the same command ``kind`` made) or ``resume`` names that run's
    checkpoint (training continues it in place)."""
    if run_dir is None or str(run_dir).strip() == "":
        raise ValueError("run_dir must name a folder, got an empty string")
    path = Path(run_dir)
    if path.exists() and not path.is_dir():
        raise ValueError(f"run folder {path} is a file, not a folder: choose another run_dir")
    if resume is not None and str(resume).strip() and path.is_dir():
        given = Path(resume).resolve()
        if given.parent == path.resolve() and given.name != "checkpoint.pt" and given.is_file():
            raise ValueError(f"resume names {Path(resume).name} in the run folder {path}: a run continues in place only "
                             f"from its last checkpoint.pt (continuing from {given.name} there would replace the later "
                             f"epochs); to train on from {given.name}, give another run folder (--run-dir NEW)")
    created = not path.exists()
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
        made_by = owner(path)
        if made_by not in (None, kind):
            raise ValueError(f"folder {path} holds the results of `pvae {made_by}`, which only that command may replace: "
                             f"choose another {'run_dir' if kind == 'train' else 'output folder (--out)'}")
        if not overwrite:
            raise ValueError(f"run folder {path} already holds a run: pass overwrite=True (--overwrite) to replace "
                             f"it, resume it (--resume {path}), or choose another run_dir")
        clear(path)
        start_manifest(path, kind)
    _claim(path, kind, created)
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
    """Whether ``pid`` is a running process that can be a pvae writer: a process id reused by
    another program (after a crash or a reboot left the lock behind) is not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").lower()
    except OSError:
        return True  # no /proc (not Linux) or not ours to read: assume it is a writer
    return b"python" in command or b"pvae" in command
