"""What pvae keeps between processes to compile faster: a folder of small JSON records, and
inductor's own caches.

``$PVAE_CACHE_DIR`` (``""`` turns the records off), else ``$XDG_CACHE_HOME/pvae``, else
``~/.cache/pvae``. Every record is advisory: a missing, unreadable or damaged one is treated as
empty, and a folder that cannot be written is skipped, never an error.

inductor keeps what it compiled (its FX graph cache, the C++ kernels, and a precompiled header of
about 150 MB that takes 7-8 s to build) under ``/tmp/torchinductor_$USER``, which many systems
empty at every boot and which is a node's own on a cluster. pvae's records would then call a
compile warm that inductor redoes from nothing. So pvae's own compiles (`inductor_caches`) keep
inductor's caches beside its records, in ``inductor-<CPU model and torch>`` (`inductor_dir`), unless
the user chose ``$TORCHINDUCTOR_CACHE_DIR``; a record of what compiled is kept per such folder
(`compiled_record`).
"""

from __future__ import annotations

import contextlib
import functools
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


@functools.cache
def _cpu() -> str:
    """The CPU's model name (read once per process: every compile decision and record asks)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return cpu


def machine_tag() -> str:
    """The CPU model, torch's version and the thread count: what decides which kernels are faster."""
    return hashlib.sha256(f"{_cpu()}|{torch.__version__}|{torch.get_num_threads()}".encode()).hexdigest()[:16]


def inductor_dir() -> Path | None:
    """Where pvae's compiles keep inductor's caches: ``inductor-<tag>`` in pvae's folder, the tag
    naming the CPU model and torch's version (kernels built with ``-march=native`` for one CPU must
    not load on another that shares the folder). None where the user chose
    ``$TORCHINDUCTOR_CACHE_DIR`` (inductor sets it to its own default once it runs: that is no
    choice) or turned pvae's records off."""
    root = cache_dir()
    chosen = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if root is None:
        return None
    if chosen:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir

        if os.path.abspath(chosen) != os.path.abspath(default_cache_dir()):
            return None
    tag = hashlib.sha256(f"{_cpu()}|{torch.__version__}".encode()).hexdigest()[:16]
    return root / f"inductor-{tag}"


@contextlib.contextmanager
def inductor_caches():
    """While pvae compiles a graph: inductor's caches, its precompiled header included, in
    `inductor_dir` (where one is to be used and can be made); as they were on exit."""
    target = inductor_dir()
    try:
        if target is not None:
            target.mkdir(parents=True, exist_ok=True)
    except OSError:
        target = None
    if target is None:
        yield
        return
    from torch._inductor import codecache

    env = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    headers = {name: getattr(codecache, name) for name in ("_HEADER_DIR", "_HEADER_LOCK_DIR") if hasattr(codecache, name)}
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(target)
    if len(headers) == 2:
        codecache._HEADER_DIR = str(target / "precompiled_headers")
        codecache._HEADER_LOCK_DIR = str(target / "precompiled_headers" / "locks")
    try:
        yield
    finally:
        if env is None:
            os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
        else:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = env
        for name, value in headers.items():
            setattr(codecache, name, value)


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


COMPILED = "compiled-steps.json"  # where inductor's caches are the user's (or inductor's default)
#: steps whose compiled form was not faster on this machine; ".v2": verdicts taken before denormals were
#: flushed on torch's worker threads (pvae.util.denormals) blamed the compiled step for them; ".v3": verdicts
#: that compared eager steps timed before the compile with compiled ones timed after it (a machine slowing
#: down in between blamed the compiled step; `pvae.training.loop.AutoStep` now alternates them): both void
SLOWER = "slower-compiled-steps.v3.json"


def compiled_record() -> str:
    """The record of what compiled into the inductor caches pvae's compiles use now: one per
    `inductor_dir` (so that a record never outlives the caches it speaks of: a folder that is gone
    is a cold machine), else `COMPILED`."""
    where = inductor_dir()
    if where is None:
        return COMPILED
    return f"compiled-steps-{where.name}.json" if where.is_dir() else ""


def seen_before(signature: str | None, record: str | None = None) -> bool:
    """Whether this machine compiled the graph of this signature before (inductor's caches warm)."""
    record = compiled_record() if record is None else record
    seen = read_record(record) if signature and record else None
    return isinstance(seen, list) and signature in seen


def compile_tier(exact: str, broad: str) -> str:
    """Which ``COMPILE_FROM`` threshold prices a compile here: ``"graph"`` where this machine compiled
    this very graph before (signature ``exact``), ``"warm"`` where it compiled its kin (``broad``: the
    same net at other shapes), else ``"cold"``. One read of the record."""
    record = compiled_record()
    seen = read_record(record) if record else None
    seen = seen if isinstance(seen, list) else []
    return "graph" if exact in seen else "warm" if broad in seen else "cold"


def slower_here(signature: str | None) -> bool:
    """Whether the compiled form of this step was measured slower than its eager form here."""
    return seen_before(signature, SLOWER)


def remember(signature: str, record: str | None = None) -> None:
    """Add ``signature`` to ``record`` (default: `compiled_record`, once its folder exists)."""
    record = compiled_record() if record is None else record
    if not record:
        return
    seen = read_record(record)
    seen = seen if isinstance(seen, list) else []
    if signature not in seen:
        write_record(record, (seen + [signature])[-500:])
