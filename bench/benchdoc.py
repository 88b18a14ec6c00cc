"""What every benchmark script shares: the machine line and its section of docs/benchmarks.md."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def machine() -> str:
    """e.g. '2 cores, AMD EPYC' (the CPU model from /proc/cpuinfo where there is one)."""
    model = platform.processor() or platform.machine()
    try:
        found = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
        model = found.group(1).strip() if found else model
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {model}"


def write_section(section: str, body: str) -> None:
    """Put `section` (a '## ' heading) with `body` under it in docs/benchmarks.md, replacing that
    section if it is there (up to the next '## ' heading), else appending it."""
    block = f"{section}\n\n{body.strip()}\n"
    text = DOC.read_text(encoding="utf-8") if DOC.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(section)}\n.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)
    text = pattern.sub(lambda _: block + "\n", text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + block
    DOC.write_text(text.rstrip("\n") + "\n", encoding="utf-8")
