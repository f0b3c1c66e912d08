"""How many CPU cores this process may use: the one count behind every "all cores" default
(engine threads, lanes, the fit's plan, benchmark reports)."""
from __future__ import annotations

import os


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity where the system has one (Linux:
    a container's or ``taskset``'s CPU set, not the machine's count), else ``os.cpu_count()``;
    at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no affinity on this system (macOS, Windows)
        return max(1, os.cpu_count() or 1)
