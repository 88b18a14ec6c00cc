"""manifest.json, the seal of a folder: the sha256 of every file in it, written last.

One format for both folders that carry one: the run folder (`status`, `finished`, `versions`,
what the run reports, `artifacts`) and each checkpoint `step-N` (`step`, `artifacts`). A folder
verifies when its manifest reads and every file it lists is there with that hash."""

from __future__ import annotations

import json
import platform
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from tunesmith.runfolder.atomic import sha256_file, write_json

MANIFEST = "manifest.json"


def artifact_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder` but the manifest and hidden temporaries, by relative path."""
    return {
        str(p.relative_to(folder)): sha256_file(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST and not p.name.startswith(".")
    }


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The manifest of `folder`, or None when it is missing or unreadable (its `artifacts` not a mapping)."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("artifacts"), dict):
        return None
    return manifest


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in ("tunesmith", "torch", "transformers", "peft", "accelerate"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def write_manifest(run_dir: Path, status: str, extra: dict[str, Any]) -> Path:
    """Seal the run: status, versions and the sha256 of every artifact in the folder."""
    manifest = {"status": status, "finished": _now(), "versions": versions(), **extra}
    return write_json(run_dir / MANIFEST, manifest | {"artifacts": artifact_hashes(run_dir)})


def reseal_manifest(run_dir: Path, **changes: Any) -> Path:
    """After a later step wrote into a sealed run (`tunesmith eval`: eval/, report.html): the same
    manifest with `changes` merged in and every artifact's hash taken again, so it verifies."""
    path = run_dir / MANIFEST
    manifest = json.loads(path.read_text(encoding="utf-8"))
    manifest.update(changes, updated=_now(), artifacts=artifact_hashes(run_dir))
    return write_json(path, manifest)


def seal_checkpoint(folder: Path, step: int, extra: dict[str, Any] | None = None) -> Path:
    """A checkpoint's manifest, on disk (fsync) before the folder is renamed into place."""
    manifest = {"step": step, **(extra or {}), "artifacts": artifact_hashes(folder)}
    return write_json(folder / MANIFEST, manifest, durable=True)
