"""Files pvae writes: atomically (a reader never sees half a file) and as strict JSON (a
non-finite number is written as null, with a note)."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path


#: the list of what pvae wrote in a folder it prepared (first line ``#pvae KIND``: the command
#: that owns the folder); ``--overwrite`` removes what it lists and nothing else
MANIFEST = ".pvae-files"


def start_manifest(folder, kind: str) -> None:
    """Mark ``folder`` as owned by the pvae command ``kind`` (train, eval, compare), listing nothing yet."""
    (Path(folder) / MANIFEST).write_text(f"#pvae {kind}\n")


def manifest(folder):
    """(the owning command, the names pvae wrote there) from ``folder``'s manifest, or None without one."""
    try:
        lines = (Path(folder) / MANIFEST).read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    kind = lines[0][len("#pvae "):].strip() if lines and lines[0].startswith("#pvae ") else None
    return kind, {line for line in lines[1:] if line and "/" not in line.rstrip("/") and line not in (".", "..")}


def note_written(path) -> None:
    """Add ``path`` (a file, or a folder ending in /) to its folder's manifest, where there is one."""
    path = Path(path)
    listing = path.parent / MANIFEST
    if listing.is_file():
        line = path.name + ("/" if path.is_dir() else "")
        try:
            if line in listing.read_text().splitlines()[1:]:
                return  # listed once, however often it is rewritten (a checkpoint every epoch)
        except (OSError, UnicodeDecodeError):
            pass
        with open(listing, "a") as f:  # one short append: atomic on POSIX, so concurrent writers interleave lines
            f.write(line + "\n")


def atomic_write(path, write) -> None:
    """Call ``write(tmp_path)``, flush it to disk, then rename it over ``path`` in one step."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        try:
            write(tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
            note_written(path)
        except RuntimeError as e:  # torch.save's writer on a full disk: "enforce fail at inline_container.cc"
            free = shutil.disk_usage(path.parent).free
            raise OSError(f"cannot write {path}: {'the disk is full' if free < 2 ** 20 else 'write failed'} "
                          f"({free / 2 ** 20:.0f} MB free; {str(e).splitlines()[0][:80]})") from None
    finally:
        if tmp.exists():
            tmp.unlink()


def taken(path, also=()) -> Path | None:
    """The first of ``path`` and its siblings with the suffixes ``also`` that exists, or None."""
    path = Path(path)
    for p in (path, *(path.with_suffix(s) for s in also)):
        if p.exists() or p.is_symlink():
            return p
    return None


def new_path(path, also=()) -> Path:
    """``path``, or ``name-2.ext``, ``name-3.ext`` ... where it (or a sibling with a suffix in
    ``also``) is taken: outputs never replace a file."""
    path = Path(path)
    candidate, i = path, 1
    while taken(candidate, also) is not None:
        i += 1
        candidate = path.with_name(f"{path.stem}-{i}{path.suffix}")
    return candidate


def write_text(path, text: str) -> None:
    """Write a text file atomically."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def finite(obj, notes: list | None = None, where: str = ""):
    """``obj`` with every NaN/inf float replaced by None; ``notes`` gets one line per replacement."""
    if isinstance(obj, float) and not math.isfinite(obj):
        if notes is not None:
            notes.append(f"{where or 'a value'} is {obj} (not a finite number), written as null")
        return None
    if isinstance(obj, dict):
        return {k: finite(v, notes, k) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v, notes, where) for v in obj]
    return obj


def dumps(obj) -> str:
    """JSON text with non-finite numbers as null (strict JSON: no ``Infinity``/``NaN``)."""
    return json.dumps(finite(obj), indent=1, allow_nan=False)


def read_json(path):
    """A JSON file of a run folder; a damaged or unreadable one is a ``ValueError`` naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"damaged run file {path}: not valid JSON ({str(e).splitlines()[0]}); restore or delete "
                         "it") from None
    except IsADirectoryError:
        raise ValueError(f"damaged run folder: {path} is a folder, not a file") from None
