"""numba, optional: kernels compiled where it is installed, numpy forms everywhere."""
from __future__ import annotations


def numba_compiled(fn, **options):
    """``fn`` compiled by numba (cached on disk, releasing the GIL so the completer's threads
    run it side by side), or None where numba is absent (optional: each kernel here has a
    numpy form that gives the same result)."""
    try:
        import numba
    except Exception:  # not installed, or no wheel for this platform
        return None
    return numba.njit(cache=True, nogil=True, **options)(fn)
