"""Under CI a real tool that cannot be had fails the set-up instead of letting its tests skip (issue 18.5).

`make golang` and `make sshd` are run with the tool (and apt-get, so it cannot be installed) hidden
from PATH: with CI=true they must fail naming the tool; without CI they warn and the tests skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).parents[2]


def path_without(tmp_path: Path, hidden: set[str]) -> str:
    """A PATH of one folder linking every program of the usual folders but `hidden`."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for source in ("/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"):
        if not os.path.isdir(source):
            continue
        for name in os.listdir(source):
            target = folder / name
            if name in hidden or target.exists() or target.is_symlink():
                continue
            target.symlink_to(os.path.join(source, name))
    return str(folder)


def make(target: str, path: str, ci: bool) -> subprocess.CompletedProcess:
    env = {"PATH": path, "HOME": os.environ.get("HOME", "/root"), "SSHD_BIN": "/nonexistent/sshd"}
    if ci:
        env["CI"] = "true"
    return subprocess.run(["make", "-s", target], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.parametrize("target, tool", [("golang", "go"), ("sshd", "sshd")])
def test_a_missing_real_tool_fails_ci_and_only_warns_elsewhere(target, tool, tmp_path):
    path = path_without(tmp_path, {tool, "apt-get"})
    assert shutil.which(tool, path=path) is None
    under_ci = make(target, path, ci=True)
    assert under_ci.returncode != 0 and f"ERROR: {tool} not found" in under_ci.stderr, under_ci
    assert "CI needs it" in under_ci.stderr
    local = make(target, path, ci=False)
    assert local.returncode == 0 and f"WARNING: {tool} not found" in local.stdout and "will be skipped" in local.stdout
