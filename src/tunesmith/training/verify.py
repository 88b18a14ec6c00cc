"""Which checkpoints can be trusted: the manifest of sha256 hashes each `step-N` folder is sealed with,
checking it, and moving a checkpoint that fails its check aside (`checkpoints/rejected/`) instead of
deleting it, so a damaged or tampered one can still be looked at.

A checkpoint verifies when its manifest.json reads and every file it lists is there with that hash.
A failure is named precisely: "no manifest", "missing step-8/optimizer.json", "hash mismatch in
step-8/adapter_model.safetensors".
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from tunesmith.runfolder import MANIFEST, move_aside, read_manifest, sha256_file

REJECTED = "rejected"
_STEP = re.compile(r"^step-(\d+)$")
_last_bad: dict[str, str] = {}  # folder -> the file that failed its check there last time: checked first


def problem(folder: Path, *, verify: bool = True) -> str | None:
    """Why `folder` is not a checkpoint to resume from, or None when its manifest (and, if `verify`,
    every hash in it) checks out.

    The file that failed last time is hashed first, so naming the problem of a folder already found
    damaged costs one file, not the whole checkpoint again."""
    if not (folder / MANIFEST).is_file():
        return "no manifest"
    manifest = read_manifest(folder)
    if manifest is None:
        return f"unreadable {folder.name}/{MANIFEST}"
    files = manifest["artifacts"]
    if not verify:
        return None
    first = _last_bad.get(str(folder))
    for name in sorted(files, key=lambda n: n != first):
        file = folder / name
        if not file.is_file():
            reason = f"missing {folder.name}/{name}"
        elif sha256_file(file) != files[name]:
            reason = f"hash mismatch in {folder.name}/{name}"
        else:
            continue
        _last_bad[str(folder)] = name
        return reason
    _last_bad.pop(str(folder), None)
    return None


def is_complete(folder: Path, *, verify: bool = True) -> bool:
    """A checkpoint is complete when its manifest exists and (if `verify`) every hash matches."""
    return problem(folder, verify=verify) is None


def checkpoint_steps(root: Path) -> list[tuple[int, Path]]:
    """Finished checkpoints (`step-N` with a manifest), oldest first; temporaries and rejected/ ignored."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP.match(p.name))]
    return sorted((step, p) for step, p in found if (p / MANIFEST).is_file())


def newest_verified(root: Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest checkpoint whose files all verify, and each newer one that does not, with why."""
    failed: list[tuple[Path, str]] = []
    for _, folder in reversed(checkpoint_steps(root)):
        reason = problem(folder)
        if reason is None:
            return folder, failed
        failed.append((folder, reason))
    return None, failed


def newest_complete(root: Path) -> Path | None:
    """The newest checkpoint whose files all verify; a damaged newer one is skipped."""
    return newest_verified(root)[0]


def reject(folder: Path) -> Path:
    """Move a checkpoint that failed its check to `checkpoints/rejected/` (never over an earlier one)."""
    target = move_aside(folder, folder.parent / REJECTED)
    _last_bad.pop(str(folder), None)
    return target


def resume_advice(root: Path, *, which: str = "newest", verb: str = "continue") -> str:
    """What a run (whose checkpoints are in `root`) that failed for lack of space still has, and how to
    go on: the tail of its error message."""
    run_dir = root.parent
    steps = checkpoint_steps(root)
    if not steps:
        return "; no checkpoint was written yet: free some space and start the run again"
    return (
        f"; the {which} checkpoint {steps[-1][1].name} is intact; free some space, then {verb} with: "
        f"tunesmith train {shlex.quote(str(run_dir))} --resume"
    )
