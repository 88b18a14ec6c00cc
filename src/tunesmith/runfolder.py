"""The run folder, shared by every stage: created only after every check passed, removed again
if the user's input turns out wrong, and sealed by manifest.json, written last."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

from tunesmith.errors import UserError

MANIFEST = "manifest.json"


def create_run_dir(path: Path) -> Path:
    """Make a new, empty run folder; an existing one is never reused or overwritten."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir()
    except FileExistsError:
        raise UserError(f"run folder {path} already exists; choose another name (--set name=...)") from None
    return path


@contextmanager
def run_folder_guard(path: Path, *, keep: bool = False) -> Iterator[None]:
    """Remove the run folder on a user error, unless `keep` (a resumed run) or it holds a checkpoint
    (work worth resuming); mark it failed on any other error."""
    try:
        yield
    except UserError as err:
        checkpoints = path / "checkpoints"
        if keep or (checkpoints.is_dir() and any(checkpoints.glob("step-*"))):
            write_manifest(path, "failed", {"error": f"{type(err).__name__}: {err}"})
        else:
            shutil.rmtree(path, ignore_errors=True)
        raise
    except BaseException as err:
        status = "interrupted" if isinstance(err, KeyboardInterrupt) else "failed"
        write_manifest(path, status, {"error": f"{type(err).__name__}: {err}"})
        raise


def write_json(path: Path, data: Any) -> None:
    """Write JSON through a temporary file and a rename, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in ("tunesmith", "torch", "transformers", "peft", "accelerate"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def write_manifest(run_dir: Path, status: str, extra: dict[str, Any]) -> Path:
    """Seal the run: status, versions and the sha256 of every artifact in the folder."""
    artifacts = {
        str(p.relative_to(run_dir)): sha256_file(p)
        for p in sorted(run_dir.rglob("*"))
        if p.is_file() and p.name != MANIFEST and not p.name.startswith(".")
    }
    manifest = {"status": status, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "versions": versions(),
                **extra, "artifacts": artifacts}
    path = run_dir / MANIFEST
    write_json(path, manifest)
    return path
