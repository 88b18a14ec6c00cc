"""The one way tunesmith writes a file or a folder: under a temporary name beside the target, renamed
into place when whole, removed on any failure, so no reader ever sees half a file.

Every writer in the library goes through these (run folders, exports, converted data, the data
cache); a full disk while writing becomes one DiskFullError line where the caller says what it was."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, BinaryIO

from tunesmith.errors import DiskFullError
from tunesmith.runfolder.disk import disk_full, ensure_space, is_disk_full


def _temporary(path: Path, kind: str = "tmp") -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.{kind}")


@contextmanager
def atomic_file(target: Path) -> Iterator[Path]:
    """Yield a path beside `target` (not yet created) for a writer to fill, a library or a tool
    alike; when the block ends it replaces `target`; on any failure it is removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = _temporary(target)
    try:
        yield temporary
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def write_bytes(path: Path, data: bytes, *, durable: bool = False) -> Path:
    """`durable`: on disk (fsync) before the rename, for a file that seals what it lists."""
    with atomic_file(path) as temporary, temporary.open("xb") as handle:
        handle.write(data)
        if durable:
            handle.flush()
            os.fsync(handle.fileno())
    return Path(path)


def write_text(path: Path, text: str, *, durable: bool = False) -> Path:
    return write_bytes(path, text.encode("utf-8"), durable=durable)


def write_json(
    path: Path, data: Any, *, indent: int | None = 2, default: Callable | None = None, durable: bool = False
) -> Path:
    text = json.dumps(data, indent=indent, ensure_ascii=False, default=default) + "\n"
    return write_text(path, text, durable=durable)


def jsonl(records: Iterable[Any], *, default: Callable | None = None) -> str:
    return "".join(json.dumps(record, ensure_ascii=False, default=default) + "\n" for record in records)


def write_jsonl(path: Path, records: Iterable[Any], *, default: Callable | None = None) -> Path:
    """One JSON object per line, written whole."""
    return write_text(path, jsonl(records, default=default))


def append_jsonl(path: Path, record: Any) -> None:
    """Add one line to a log (metrics.jsonl): one write of a whole line, so a reader sees whole
    records only, and a killed run loses at most the line being written."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with Path(path).open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, ensure_ascii=False) + "\n")


class AtomicFiles:
    """Write several files under temporary names beside them; `commit()` renames them all into
    place. Leaving the `with` block without a commit removes the temporaries: nothing half-written."""

    def __init__(self, paths: list[Path]):
        self.paths = [Path(p) for p in paths]
        self.handles: dict[Path, tuple[IO[bytes], Path]] = {}

    def __enter__(self) -> AtomicFiles:
        for path in self.paths:
            path.parent.mkdir(parents=True, exist_ok=True)
            # open(..., "xb") rather than mkstemp: the file gets the user's usual permissions, not 0600.
            temporary = _temporary(path)
            self.handles[path] = (temporary.open("xb"), temporary)
        return self

    def write(self, path: Path, data: bytes) -> None:
        self.handles[Path(path)][0].write(data)

    def commit(self) -> None:
        for path, (handle, temporary) in self.handles.items():
            handle.close()
            os.replace(temporary, path)
        self.handles = {}

    def __exit__(self, *exc: object) -> None:
        for handle, temporary in self.handles.values():  # not committed: discard
            handle.close()
            temporary.unlink(missing_ok=True)
        self.handles = {}


@contextmanager
def atomic_folder(
    target: Path,
    what: str,
    *,
    needed: int | None = None,
    then: str = "",
    seal: Callable[[Path], object] | None = None,
    quiet: bool = False,
) -> Iterator[Path]:
    """Yield a hidden sibling of `target` to fill; when the block ends, `seal` (if given) writes its
    last file into it and it replaces `target` whole. On any failure it is removed again; a full disk
    becomes one DiskFullError line. `quiet`: an OSError is swallowed (a cache that may fail to fill)."""
    target = Path(target)
    if needed is not None:
        ensure_space(target.parent, needed, what, then=then)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)  # left by a killed earlier attempt of this same process id
    try:
        staging.mkdir()
        yield staging
        if seal is not None:
            seal(staging)
        if target.exists():
            os.replace(target, old)
        os.replace(staging, target)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException as err:
        shutil.rmtree(staging, ignore_errors=True)
        if old.exists() and not target.exists():
            os.replace(old, target)
        if quiet and isinstance(err, OSError):
            return
        if isinstance(err, Exception) and not isinstance(err, DiskFullError) and is_disk_full(err):
            raise disk_full(what, target.parent, needed=needed, then=f"; nothing of it was kept{then}") from None
        raise


@contextmanager
def appending(path: Path, *, restart: bool = False) -> Iterator[BinaryIO]:
    """A file to add bytes to, as a resumable download's `.part` grows; `restart` empties it first.
    It becomes a finished file only through the caller's own check and `atomic_file`/`atomic_folder`."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb" if restart else "ab") as handle:
        yield handle


def discard(path: Path) -> None:
    """Remove a stale file (a plot of an earlier report) or folder (a pruned checkpoint); absent is fine."""
    if Path(path).is_dir() and not Path(path).is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        Path(path).unlink(missing_ok=True)


def move_aside(folder: Path, into: Path) -> Path:
    """Move `folder` into `into/` under its own name (`name.2`, `name.3`... when taken), never over another."""
    into.mkdir(parents=True, exist_ok=True)
    target, n = into / folder.name, 1
    while target.exists():
        n += 1
        target = into / f"{folder.name}.{n}"
    os.replace(folder, target)
    return target


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
