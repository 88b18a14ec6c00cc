"""Integration fixtures: one real quick-start run, shared by every module that needs a tuned model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def quickstart_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """`tunesmith quickstart` as a new user runs it (about 4 minutes on 2 CPU cores): the run folder and the
    finished process. Modules that change the run (export, merge) work on a copy."""
    out = tmp_path_factory.mktemp("quickstart")
    done = subprocess.run(
        [sys.executable, "-m", "tunesmith", "quickstart", "--set", f"output_dir={out}", "--set", "name=qs"],
        capture_output=True,
        text=True,
        timeout=2400,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return out / "qs", done
