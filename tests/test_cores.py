"""usable_cores: the cores this process may run on, which is what every "all cores" default uses."""
from __future__ import annotations

import os

import pytest

from lmae_sdk.cores import usable_cores


def test_usable_cores_follows_the_cpu_affinity(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3, 5}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert usable_cores() == 2  # the process's CPU set, not the machine's 64


def test_usable_cores_without_affinity_counts_the_machine_and_is_at_least_one(monkeypatch):
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert usable_cores() == 6
    monkeypatch.setattr(os, "cpu_count", lambda: None)  # undeterminable
    assert usable_cores() == 1


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="no CPU affinity on this system")
def test_usable_cores_is_this_process_affinity():
    assert usable_cores() == len(os.sched_getaffinity(0)) >= 1
