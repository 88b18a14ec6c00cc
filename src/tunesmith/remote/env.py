"""The environment on the host: a virtualenv with torch and this very tunesmith, built into a wheel here.

The wheel is built from the local source tree (`pip wheel --no-deps`, in a temporary copy so the
tree stays clean) and cached by a hash of the sources. On the host the virtualenv is keyed by the
Python version, the torch version and tunesmith's dependency list: a later run with the same
dependencies reuses it and only swaps the tunesmith wheel when its content changed. torch comes
first and on its own, the CUDA build only where `nvidia-smi -L` answers on the host, else the CPU
build, so a CPU host never downloads CUDA wheels.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from tunesmith.errors import TunesmithError, UserError
from tunesmith.remote.transport import Remote

TORCH_VERSION = os.environ.get("TUNESMITH_REMOTE_TORCH", "2.13.0")
ENV_FORMAT = "1"  # bump when the layout of an environment changes


@dataclass(frozen=True)
class Wheel:
    path: Path
    content: str  # sha256 over the members' names and bytes: the same sources give the same value
    requires: tuple[str, ...]


def cache_dir() -> Path:
    """Wheels built for remote hosts: `remote/` in the tunesmith cache folder (tunesmith.paths)."""
    from tunesmith.paths import cache_root

    return cache_root() / "remote"


def project_root() -> Path | None:
    """The source tree this tunesmith runs from (src layout), if it does."""
    here = Path(__file__).resolve().parent.parent  # src/tunesmith
    root = here.parent.parent
    return root if (root / "pyproject.toml").is_file() and (root / "src" / "tunesmith").is_dir() else None


def source_hash(root: Path) -> str:
    digest = hashlib.sha256()
    files = [root / "pyproject.toml", root / "README.md"]
    files += sorted(
        p
        for p in (root / "src" / "tunesmith").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix not in {".pyc", ".pyo"}
    )
    for path in files:
        if path.is_file():
            digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def build_wheel(given: str | None = None) -> Wheel:
    """The tunesmith wheel to install on the host: `given`, or one built from the local sources."""
    if given:
        path = Path(given).expanduser()
        if not path.is_file() or path.suffix != ".whl":
            raise UserError(f"--wheel {given}: not a wheel file")
        return read_wheel(path)
    root = project_root()
    if root is None:
        raise UserError(
            "tunesmith is not running from a source tree, so no wheel can be built here; "
            "pass --wheel PATH (a tunesmith wheel) instead"
        )
    folder = cache_dir() / "wheels" / source_hash(root)[:20]
    found = sorted(folder.glob("tunesmith-*.whl")) if folder.is_dir() else []
    if found:
        return read_wheel(found[0])
    with tempfile.TemporaryDirectory(prefix="tunesmith-wheel-") as tmp:
        copy = Path(tmp) / "src-copy"
        copy.mkdir()
        for name in ("pyproject.toml", "README.md", "LICENSE"):
            if (root / name).is_file():
                shutil.copy2(root / name, copy / name)
        shutil.copytree(root / "src", copy / "src", ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
        out = Path(tmp) / "out"
        argv = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(copy)]
        if _has_build_tools():
            argv.insert(5, "--no-build-isolation")
        done = subprocess.run(argv, capture_output=True, text=True)
        wheels = sorted(out.glob("tunesmith-*.whl"))
        if done.returncode != 0 or not wheels:
            raise TunesmithError(f"building the tunesmith wheel failed: {(done.stderr or done.stdout)[-2000:]}")
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / wheels[0].name
        shutil.copy2(wheels[0], target)
    return read_wheel(target)


def _has_build_tools() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(name) is not None for name in ("setuptools", "wheel"))


def read_wheel(path: Path) -> Wheel:
    digest = hashlib.sha256()
    requires: list[str] = []
    with zipfile.ZipFile(path) as archive:
        for name in sorted(archive.namelist()):
            data = archive.read(name)
            digest.update(name.encode() + b"\0" + data + b"\0")
            if name.endswith(".dist-info/METADATA"):
                requires = [
                    line.split(":", 1)[1].strip()
                    for line in data.decode("utf-8").splitlines()
                    if line.startswith("Requires-Dist:") and "extra ==" not in line
                ]
    return Wheel(path, digest.hexdigest(), tuple(sorted(requires)))


def env_key(wheel: Wheel, remote_python: str) -> str:
    """Which virtualenv on the host: same Python minor version, torch and dependency list -> same folder."""
    minor = ".".join(remote_python.split(".")[:2])
    text = "\n".join([ENV_FORMAT, minor, TORCH_VERSION, *wheel.requires])
    return f"py{minor}-" + hashlib.sha256(text.encode()).hexdigest()[:16]


def ensure_env(remote: Remote, wheel: Wheel, remote_python: str, *, log: IO[str] | None = None) -> dict:
    """Create or reuse the host's virtualenv for this wheel; returns the agent's answer
    ({"python": ..., "created": bool, "installed": bool, "cuda": bool})."""
    sha = remote.upload([wheel.path])[wheel.path]
    return remote.call(
        "env",
        key=env_key(wheel, remote_python),
        wheel_sha=sha,
        wheel_name=wheel.path.name,
        wheel_content=wheel.content,
        torch_version=TORCH_VERSION,
        stderr=log or sys.stderr,
        timeout=None,
    )
