"""`tunesmith plan` on CPU sizes its advice by the kernel's `MemAvailable` (page cache counts as
available), falling back to free pages from sysconf where /proc/meminfo has no such line."""

from __future__ import annotations

import os

from tunesmith.plan.measure import available_memory_bytes

MEMINFO = """MemTotal:       24576000 kB
MemFree:         5800000 kB
MemAvailable:   23000000 kB
Buffers:          100000 kB
Cached:         16000000 kB
"""


def test_reads_mem_available_not_free_pages(tmp_path):
    path = tmp_path / "meminfo"
    path.write_text(MEMINFO)
    assert available_memory_bytes(path) == 23000000 * 1024


def test_falls_back_to_sysconf_without_mem_available(tmp_path, monkeypatch):
    pages = {"SC_AVPHYS_PAGES": 1000, "SC_PAGE_SIZE": 4096}
    monkeypatch.setattr(os, "sysconf", lambda name: pages[name])
    path = tmp_path / "meminfo"
    path.write_text("MemTotal:       24576000 kB\nMemFree:         5800000 kB\n")
    assert available_memory_bytes(path) == 1000 * 4096  # an old kernel: no MemAvailable line
    assert available_memory_bytes(tmp_path / "missing") == 1000 * 4096  # not Linux: no /proc


def test_this_machine_reports_at_least_its_free_pages():
    free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert available_memory_bytes() >= free * 0.9  # free pages are part of MemAvailable (both move a little)
