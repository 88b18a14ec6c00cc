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
    return f"{os.cpu_count()} cores, {model} ({cpu_flags() or 'no AVX2'})"


def cpu_flags() -> str:
    """The flags that decide a CPU's training speed, as /proc/cpuinfo spells them, e.g. 'avx2 avx512_bf16'."""
    try:
        found = set(re.findall(r"\b(avx512_bf16|amx_bf16|avx512f|avx2)\b", Path("/proc/cpuinfo").read_text()))
    except OSError:
        found = set()
    return " ".join(flag for flag in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if flag in found)


def cpu_kind() -> str:
    """Which kind of CPU this is for training, by its flags: bf16 native or emulated.

    >>> cpu_kind() in (KINDS["bf16"], KINDS["fp32"])
    True
    """
    flags = set(cpu_flags().split())
    return KINDS["bf16"] if flags & {"avx512_bf16", "amx_bf16"} else KINDS["fp32"]


KINDS = {
    "bf16": "AVX-512 BF16 / AMX (bf16 native: bf16 autocast)",
    "fp32": "AVX2 only (bf16 emulated: every run fp32)",
}


def write_machine_section(section: str, body: str) -> None:
    """Put `body` under this machine kind's `### ` heading (with today's date) inside `section`,
    keeping the other kind's last figures as they are."""
    import datetime

    kind = cpu_kind()
    text = DOC.read_text(encoding="utf-8") if DOC.exists() else "# Benchmarks\n"
    found = re.search(rf"^{re.escape(section)}\n(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    current = found.group(1) if found else ""
    parts = re.split(r"^(?=### )", current, flags=re.MULTILINE)
    intro, subsections = parts[0], [p for p in parts[1:] if p.strip()]
    kept = [p.rstrip("\n") for p in subsections if not p.startswith(f"### {kind}")]
    mine = f"### {kind}, measured {datetime.date.today().isoformat()}\n\n{body.strip()}"
    write_section(section, "\n\n".join([x for x in (intro.strip(), mine, *kept) if x]))


def write_section(section: str, body: str) -> None:
    """Put `section` (a '## ' heading) with `body` under it in docs/benchmarks.md, replacing that
    section if it is there (up to the next '## ' heading), else appending it."""
    block = f"{section}\n\n{body.strip()}\n"
    text = DOC.read_text(encoding="utf-8") if DOC.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(section)}\n.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)
    text = pattern.sub(lambda _: block + "\n", text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + block
    DOC.write_text(text.rstrip("\n") + "\n", encoding="utf-8")


def run_alternating(
    script: str, modes: list[str], rounds: int, extra: list[str], folder: Path
) -> dict[str, list[dict]]:
    """Run `script --worker MODE --out DIR *extra` once per mode and round, each in its own process,
    the order of the modes reversed every other round; each worker prints one `RESULT {json}` line.
    Returns every mode's results in round order; a failed worker stops the benchmark with its stderr."""
    import json
    import subprocess
    import sys

    results: dict[str, list[dict]] = {m: [] for m in modes}
    for round_ in range(rounds):
        for mode in modes if round_ % 2 == 0 else modes[::-1]:
            out = folder / f"{mode}-{round_}"
            out.mkdir()
            done = subprocess.run(
                [sys.executable, script, "--worker", mode, "--out", str(out), *extra],
                capture_output=True,
                text=True,
                env={**os.environ, "HF_HUB_OFFLINE": "1"},
            )
            line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
            if done.returncode != 0 or line is None:
                raise SystemExit(f"{mode} failed:\n{done.stderr[-4000:]}")
            results[mode].append(json.loads(line[len("RESULT ") :]))
            print(mode, results[mode][-1], flush=True)
    return results
