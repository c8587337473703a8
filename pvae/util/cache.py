"""What pvae keeps between processes to compile faster: a folder of small JSON records.

``$PVAE_CACHE_DIR`` (``""`` turns the records off), else ``$XDG_CACHE_HOME/pvae``, else
``~/.cache/pvae``. Every record is advisory: a missing, unreadable or damaged one is treated as
empty, and a folder that cannot be written is skipped, never an error.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from pathlib import Path

import torch


def cache_dir() -> Path | None:
    root = os.environ.get("PVAE_CACHE_DIR")
    if root == "":
        return None
    return Path(root) if root else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pvae"


def machine_tag() -> str:
    """The CPU model, torch's version and the thread count: what decides which kernels are faster."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return hashlib.sha256(f"{cpu}|{torch.__version__}|{torch.get_num_threads()}".encode()).hexdigest()[:16]


def read_record(name: str):
    root = cache_dir()
    try:
        return json.loads((root / name).read_text()) if root else None
    except (OSError, ValueError, TypeError):
        return None


def write_record(name: str, value) -> None:
    root = cache_dir()
    if root is None:
        return
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / f"{name}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(value))
        os.replace(tmp, root / name)
    except (OSError, ValueError, TypeError):
        pass


COMPILED = "compiled-steps.json"
#: steps whose compiled form was not faster on this machine; ".v2": verdicts taken before denormals were
#: flushed on torch's worker threads (pvae.util.denormals) blamed the compiled step for them, and are void
SLOWER = "slower-compiled-steps.v2.json"


def seen_before(signature: str | None, record: str = COMPILED) -> bool:
    """Whether this machine compiled the graph of this signature before (inductor's caches warm)."""
    seen = read_record(record) if signature else None
    return isinstance(seen, list) and signature in seen


def compile_tier(exact: str, broad: str) -> str:
    """Which ``COMPILE_FROM`` threshold prices a compile here: ``"graph"`` where this machine compiled
    this very graph before (signature ``exact``), ``"warm"`` where it compiled its kin (``broad``: the
    same net at other shapes), else ``"cold"``. One read of the record."""
    seen = read_record(COMPILED)
    seen = seen if isinstance(seen, list) else []
    return "graph" if exact in seen else "warm" if broad in seen else "cold"


def slower_here(signature: str | None) -> bool:
    """Whether the compiled form of this step was measured slower than its eager form here."""
    return seen_before(signature, SLOWER)


def remember(signature: str, record: str = COMPILED) -> None:
    seen = read_record(record)
    seen = seen if isinstance(seen, list) else []
    if signature not in seen:
        write_record(record, (seen + [signature])[-500:])
