"""Large CPU buffers reused rather than mapped afresh: glibc's malloc thresholds for pvae's work.

glibc's malloc serves an allocation above its mmap threshold (128 KiB, raised as mapped chunks are
freed, to 32 MiB at most) with freshly mapped pages, and hands the top of its heap back to the
operating system once more than its trim threshold (twice the mmap threshold) lies free there.
A step of an importance-weighted objective, or an AIS or IS pass, allocates and frees buffers of
several MB (at k = 50 and batch 100, the decoder's output alone is 5000 x 784 floats, 15.7 MB), so
with glibc's defaults each step faults its buffers' pages in again, one 4 KiB page at a time.
Measured on 2 AMD EPYC cores: the compiled IWAE k=50 step took 54.7-58.5 ms with 610,000-710,000
page faults in the run, and 46.5-49.2 ms with 180,000-230,000 once the thresholds were fixed
(`benchmarks/README.md`); the k = 1 step, whose buffers glibc already reuses, did not change.

`keep_buffers` fixes them, once per process, when pvae first trains or evaluates on the CPU:
allocations up to 32 MiB (glibc's largest mmap threshold) come from the heap, and up to 128 MiB
may lie free at its top before it is trimmed. The run's peak memory grew by about 100 MB
(1.24-1.26 GB against 1.13-1.16 GB). glibc offers no way back to its adaptive defaults, so the setting lasts
for the process. It is left alone where the user tuned malloc (``MALLOC_MMAP_THRESHOLD_``,
``MALLOC_TRIM_THRESHOLD_``, ``GLIBC_TUNABLES`` naming malloc, or another allocator preloaded), where
``PVAE_MALLOC=off``, and off glibc.
"""

from __future__ import annotations

import ctypes
import os

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's largest
TRIM_THRESHOLD = 128 * 1024 * 1024

_done: bool | None = None  # what the first call did, for the process


def user_choice(environ=os.environ) -> str | None:
    """Why pvae leaves malloc as it is under ``environ`` (the user tuned it, or asked pvae not to),
    or None."""
    if environ.get("PVAE_MALLOC", "").lower() in ("off", "0", "false", "default"):
        return "PVAE_MALLOC"
    for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_"):
        if name in environ:
            return name
    if "malloc" in environ.get("GLIBC_TUNABLES", ""):
        return "GLIBC_TUNABLES"
    if any(lib in environ.get("LD_PRELOAD", "") for lib in ("jemalloc", "tcmalloc", "mimalloc")):
        return "LD_PRELOAD"
    return None


def keep_buffers() -> bool:
    """Fix glibc's malloc thresholds for this process (see the module docstring); True where they
    are fixed, by this call or an earlier one."""
    global _done
    if _done is None:
        _done = False
        if user_choice() is None:
            try:
                libc = ctypes.CDLL(None)
                libc.gnu_get_libc_version  # noqa: B018 - glibc's own symbol: musl and others stay as they are
                mallopt = libc.mallopt
            except (OSError, AttributeError):
                return False
            mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            _done = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _done
