"""The run folder, shared by every stage: created only after every check passed, removed again
if the user's input turns out wrong, and sealed by manifest.json, written last.

Every stage writes what it makes under a temporary name and renames it when whole (`atomic_folder`,
`write_json`), checks the free space first where the size is known (`ensure_space`), and turns a
full disk into one DiskFullError line (`disk_full`) after removing the partial temporary."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import platform
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

from tunesmith.errors import DiskFullError, UserError

MANIFEST = "manifest.json"
SPACE_RESERVE = 64 * 1024
"""Bytes a write that checks its space first leaves free, so that the run's manifest can still say why it stopped."""
_DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_DISK_FULL_TEXT = ("no space left on device", "disk quota exceeded", "os error 28", "os error 122")
_SHORT_WRITE = re.compile(r"\d+ requested and \d+ written")  # numpy's tofile (the gguf writer) on a full disk


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
            _seal_failed(path, "failed", err)
        else:
            shutil.rmtree(path, ignore_errors=True)
        raise
    except BaseException as err:
        _seal_failed(path, "interrupted" if isinstance(err, KeyboardInterrupt) else "failed", err)
        raise


def _seal_failed(path: Path, status: str, err: BaseException) -> None:
    """The failed (or interrupted) manifest; on a disk too full even for that, the error says so."""
    try:
        write_manifest(path, status, {"error": f"{type(err).__name__}: {err}"})
    except Exception as failure:  # noqa: BLE001 - the error being reported matters more
        if not is_disk_full(failure):
            raise
        if isinstance(err, UserError):
            err.args = (f"{err}; manifest.json could not be updated either",)


def write_json(path: Path, data: Any) -> None:
    """Write JSON through a temporary file and a rename, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# --- a full disk -------------------------------------------------------------------------------------


def is_disk_full(err: BaseException) -> bool:
    """Whether `err` (or what it was raised from) says the disk or the quota is full; safetensors
    reports it as a SafetensorError naming "os error 28", numpy's tofile as a short write."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in _DISK_FULL_ERRNOS:
            return True
        if any(text in str(err).lower() for text in _DISK_FULL_TEXT):
            return True
        if isinstance(err, OSError) and err.errno is None and _SHORT_WRITE.search(str(err)):
            return True
        err = err.__cause__ or err.__context__
    return False


def _existing(path: Path) -> Path:
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_space(path: Path) -> int:
    """Bytes free for writing at `path` (or its nearest existing parent)."""
    return shutil.disk_usage(_existing(path)).free


def mount_point(path: Path) -> Path:
    path = _existing(path).resolve()
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


def tree_size(path: Path) -> int:
    """Bytes a file or folder takes on disk (whole blocks, as the file system counts them)."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else []
    return sum(max(s.st_size, getattr(s, "st_blocks", 0) * 512) for s in (f.stat() for f in files))


def human_size(n: int | float) -> str:
    """A size for people.

    >>> human_size(0), human_size(61440), human_size(5 * 2**30)
    ('0 B', '60.0 KiB', '5.0 GiB')
    """
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError  # pragma: no cover


def disk_full(what: str, where: Path, *, needed: int | None = None, then: str = "") -> DiskFullError:
    """The one-line error: what was being written, the space it needed (when known), the space free
    now (the partial temporary already removed), and `then`: what is intact and how to go on."""
    size = f"about {human_size(needed)} needed, " if needed else ""
    return DiskFullError(
        f"disk full while writing {what}: {size}{human_size(free_space(where))} free on {mount_point(where)}{then}"
    )


def ensure_space(where: Path, needed: int, what: str, *, then: str = "") -> None:
    """Refuse before writing anything when `needed` bytes (plus SPACE_RESERVE) are not free at `where`."""
    if free_space(where) < needed + SPACE_RESERVE:
        raise disk_full(what, where, needed=needed, then=f"; nothing was written{then}")


@contextmanager
def atomic_folder(target: Path, what: str, *, needed: int | None = None, then: str = "") -> Iterator[Path]:
    """Yield a hidden sibling of `target` to fill; when the block ends, it replaces `target` whole.
    On any failure it is removed again; a full disk becomes one DiskFullError line."""
    if needed is not None:
        ensure_space(target.parent, needed, what, then=then)
    staging = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)  # left by a killed earlier attempt of this same process id
    try:
        staging.mkdir(parents=True)
        yield staging
        if target.exists():
            os.replace(target, old)
        os.replace(staging, target)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException as err:
        shutil.rmtree(staging, ignore_errors=True)
        if old.exists() and not target.exists():
            os.replace(old, target)
        if isinstance(err, Exception) and not isinstance(err, DiskFullError) and is_disk_full(err):
            raise disk_full(what, target.parent, needed=needed, then=f"; nothing of it was kept{then}") from None
        raise


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
    artifacts = _artifact_hashes(run_dir)
    manifest = {
        "status": status,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": versions(),
        **extra,
        "artifacts": artifacts,
    }
    path = run_dir / MANIFEST
    write_json(path, manifest)
    return path


def reseal_manifest(run_dir: Path, **changes: Any) -> Path:
    """After a later step wrote into a sealed run (`tunesmith eval`: eval/, report.html): the same
    manifest with `changes` merged in and every artifact's hash taken again, so it verifies."""
    path = run_dir / MANIFEST
    manifest = json.loads(path.read_text(encoding="utf-8"))
    manifest.update(changes, updated=time.strftime("%Y-%m-%dT%H:%M:%S%z"), artifacts=_artifact_hashes(run_dir))
    write_json(path, manifest)
    return path


def _artifact_hashes(run_dir: Path) -> dict[str, str]:
    return {
        str(p.relative_to(run_dir)): sha256_file(p)
        for p in sorted(run_dir.rglob("*"))
        if p.is_file() and p.name != MANIFEST and not p.name.startswith(".")
    }
