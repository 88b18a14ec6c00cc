"""A full disk, told in one line: recognizing it in whatever a library raised, the space free where a
write goes, and the refusal before writing when the size is known."""

from __future__ import annotations

import errno
import os
import re
import shutil
from pathlib import Path

from tunesmith.errors import DiskFullError

SPACE_RESERVE = 64 * 1024
"""Bytes a write that checks its space first leaves free, so that the run's manifest can still say why it stopped."""
_DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_DISK_FULL_TEXT = ("no space left on device", "disk quota exceeded", "os error 28", "os error 122")
_SHORT_WRITE = re.compile(r"\d+ requested and \d+ written")  # numpy's tofile (the gguf writer) on a full disk


def is_disk_full(err: BaseException | None) -> bool:
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
