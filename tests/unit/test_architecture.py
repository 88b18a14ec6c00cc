"""The structure the code keeps: every write into a run folder (and every other atomic write) goes
through tunesmith.runfolder, and the machine (device) is decided in tunesmith/machine.py."""

from __future__ import annotations

import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "tunesmith"

WRITES = re.compile(
    r"os\.replace\(|os\.rename\(|\.rename\(|\.write_text\(|\.write_bytes\(|open\([^)]*[\"'][wax]b?[\"']"
    r"|\.unlink\(|rmtree\(|\.rmdir\(|mkstemp\(|json\.dump\("
)
# Files that write outside any run folder, each for a reason of its own.
OWN_WRITERS = {
    "remote/agent.py": "shipped to the remote host as one file; it cannot import tunesmith",
    "models/embedded.py": "the model cache: a locked build under ~/.cache, never a run folder",
    "plan/measure.py": "resets the kernel's peak-memory counter (/proc/self/clear_refs)",
    "training/launch.py": "a private temporary folder for the workers' reports, removed after",
}
DEVICE = re.compile(r"cuda\.is_available\(\)")
DEVICE_READERS = {  # facts about CUDA, not a decision where to run
    "plan/doctor.py": "reports what the machine has",
    "training/worker.py": "selects the local rank's GPU inside a torchrun worker",
    "training/callbacks.py": "reads CUDA memory only when CUDA is in use",
    "training/checkpoints.py": "saves and restores CUDA's RNG when CUDA is in use",
    "remote/agent.py": "runs on the remote host",
}


def _offenders(pattern: re.Pattern, allowed: dict[str, str]) -> list[str]:
    found = []
    for path in sorted(SRC.rglob("*.py")):
        name = str(path.relative_to(SRC))
        if name.startswith("runfolder/") or name in allowed or name == "machine.py":
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if pattern.search(line.split("#")[0]):
                found.append(f"{name}:{number}: {line.strip()}")
    return found


def test_only_runfolder_writes_files():
    assert _offenders(WRITES, OWN_WRITERS) == []


def test_the_device_is_decided_in_machine_py():
    assert _offenders(DEVICE, DEVICE_READERS) == []


def test_the_allowlists_name_files_that_exist():
    assert all((SRC / name).is_file() for name in [*OWN_WRITERS, *DEVICE_READERS])
