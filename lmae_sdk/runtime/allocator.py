"""glibc malloc settings for batch completion: keep freed memory for reuse.

Completing one image allocates dozens of 0.5-3 MB arrays (full-resolution planes, the
model-size inputs, logits).  With glibc's defaults such a block goes back to the kernel
when it is freed, and the next one is faulted in again, page by page and zeroed: on the
machines here a 2 MB Gaussian blur took 1.6 ms into a fresh array and 0.55 ms into a
reused one, and the host work per image in the completer fell ~5% with freed memory kept
(benchmarks/HISTORY.md).  PyTorch's CPU performance guide gives the same
advice (``MALLOC_*`` variables, or jemalloc / tcmalloc).

This changes the whole process, so the library never calls it by itself: ``lmae complete``
opts in for its own process, and a pipeline that wants the same calls
``lmae_sdk.runtime.keep_freed_memory()`` once.  It changes nothing when the
process is not on glibc, when any ``MALLOC_*_`` variable is set (the user's choice stands),
or when ``LMAE_MALLOC_DEFAULTS=1``.  The cost: the process keeps up to a few hundred MB of
freed memory for reuse instead of returning it.
"""
from __future__ import annotations

import ctypes
import logging
import os
import platform
import sys
import threading

log = logging.getLogger("lmae_sdk.runtime")

# mallopt parameters (glibc malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_lock = threading.Lock()
_state: dict[str, bool] = {}


def keep_freed_memory(mmap_threshold: int = 32 << 20, trim_threshold: int = 256 << 20,
                      top_pad: int = 64 << 20) -> bool:
    """Serve allocations below ``mmap_threshold`` bytes from the heap, and keep up to
    ``trim_threshold`` bytes of freed heap (plus ``top_pad`` of growth) for reuse.

    Once per process; returns whether the settings are in force."""
    with _lock:
        if "applied" not in _state:
            _state["applied"] = _apply(mmap_threshold, trim_threshold, top_pad)
        return _state["applied"]


def _apply(mmap_threshold: int, trim_threshold: int, top_pad: int) -> bool:
    if os.environ.get("LMAE_MALLOC_DEFAULTS") == "1":
        return False
    if any(k.startswith("MALLOC_") and k.endswith("_") for k in os.environ):
        return False
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = all(mallopt(p, v) == 1 for p, v in ((_M_MMAP_THRESHOLD, mmap_threshold),
                                              (_M_TRIM_THRESHOLD, trim_threshold), (_M_TOP_PAD, top_pad)))
    log.info("glibc malloc keeps freed memory for reuse (mmap threshold %d MB, trim threshold %d MB): %s",
             mmap_threshold >> 20, trim_threshold >> 20, "applied" if ok else "refused")
    return ok
