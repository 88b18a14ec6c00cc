"""Checkpoints without pickle: optimizer, scheduler and RNG state as safetensors + JSON, committed
atomically with a manifest of hashes, and pruned to the last K plus the best.

A checkpoint folder is written under a temporary name and renamed to `step-N` only when every file
is on disk with its sha256 in `manifest.json`; a folder without a manifest that verifies is never
resumed from. torch's own `torch.save` would pickle; these helpers store tensors in safetensors and
everything else in JSON, so a checkpoint can be inspected and loaded without executing code.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tunesmith.runfolder import sha256_file

MANIFEST = "manifest.json"
_STEP = re.compile(r"^step-(\d+)$")


# --- optimizer, scheduler, RNG <-> safetensors + JSON ------------------------------------------------


def split_tensors(tree: Any, prefix: str = "") -> tuple[Any, dict[str, Any]]:
    """Replace every tensor in a nested dict/list by `{"__tensor__": key}`; return (json tree, tensors).

    >>> import torch
    >>> tree, tensors = split_tensors({"step": torch.tensor(3.0), "betas": (0.9, 0.99)})
    >>> tree, sorted(tensors)
    ({'step': {'__tensor__': 'step'}, 'betas': [0.9, 0.99]}, ['step'])
    """
    import torch

    tensors: dict[str, Any] = {}

    def walk(node: Any, path: str) -> Any:
        if isinstance(node, torch.Tensor):
            tensors[path] = node.detach().cpu().contiguous()
            return {"__tensor__": path}
        if isinstance(node, dict):
            if all(isinstance(k, str) for k in node):
                return {k: walk(v, _join(path, k)) for k, v in node.items()}
            return {"__keys__": [_key_json(k) for k in node],
                    "__values__": [walk(v, _join(path, str(i))) for i, v in enumerate(node.values())]}
        if isinstance(node, (list, tuple)):
            return [walk(v, _join(path, str(i))) for i, v in enumerate(node)]
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        raise TypeError(f"cannot store {type(node).__name__} at {path or 'the top'} without pickle")

    return walk(tree, prefix), tensors


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def join_tensors(tree: Any, tensors: dict[str, Any]) -> Any:
    """Inverse of `split_tensors` (tuples come back as lists, which torch accepts)."""
    if isinstance(tree, dict):
        if set(tree) == {"__tensor__"}:
            return tensors[tree["__tensor__"]]
        if set(tree) == {"__keys__", "__values__"}:
            return {k: join_tensors(v, tensors) for k, v in zip(tree["__keys__"], tree["__values__"])}
        return {k: join_tensors(v, tensors) for k, v in tree.items()}
    if isinstance(tree, list):
        return [join_tensors(v, tensors) for v in tree]
    return tree


def _key_json(key: Any) -> Any:
    if isinstance(key, (int, str)) and not isinstance(key, bool):
        return key
    raise TypeError(f"cannot store a dict key of type {type(key).__name__} without pickle")


def save_state(state: Any, folder: Path, name: str) -> None:
    """`name.safetensors` (tensors) + `name.json` (the rest), for any nested state dict."""
    from safetensors.torch import save_file

    tree, tensors = split_tensors(state)
    if tensors:
        save_file(tensors, str(folder / f"{name}.safetensors"))
    (folder / f"{name}.json").write_text(json.dumps(tree), encoding="utf-8")


def load_state(folder: Path, name: str) -> Any:
    from safetensors.torch import load_file

    tree = json.loads((folder / f"{name}.json").read_text(encoding="utf-8"))
    tensors_file = folder / f"{name}.safetensors"
    tensors = load_file(str(tensors_file)) if tensors_file.is_file() else {}
    return join_tensors(tree, tensors)


def rng_state() -> dict[str, Any]:
    """Every random generator a run draws from: Python, NumPy, torch CPU and CUDA."""
    import numpy as np
    import torch

    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {"python": [version, list(internal), gauss],
                             "numpy": [kind, keys.tolist(), pos, has_gauss, cached],
                             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np
    import torch

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- atomic folders, manifests, retention --------------------------------------------------------------


@contextmanager
def atomic_checkpoint(root: Path, step: int) -> Iterator[Path]:
    """Yield a temporary folder; on success write its manifest and rename it to `step-N`."""
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".step-{step}.tmp-", dir=root))
    try:
        yield work
        write_manifest(work, step)
        final = root / f"step-{step}"
        if final.exists():  # a re-run of the same step after a resume: replace it whole
            shutil.rmtree(final)
        os.replace(work, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def write_manifest(folder: Path, step: int, extra: dict[str, Any] | None = None) -> None:
    files = {str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*"))
             if p.is_file() and p.name != MANIFEST}
    manifest = {"step": step, "files": files, **(extra or {})}
    path = folder / MANIFEST
    with path.open("w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())


def is_complete(folder: Path, *, verify: bool = True) -> bool:
    """A checkpoint is complete when its manifest exists and (if `verify`) every hash matches."""
    path = folder / MANIFEST
    if not path.is_file():
        return False
    try:
        files = json.loads(path.read_text(encoding="utf-8"))["files"]
    except (ValueError, KeyError):
        return False
    if not verify:
        return True
    return all((folder / name).is_file() and sha256_file(folder / name) == digest for name, digest in files.items())


def checkpoint_steps(root: Path) -> list[tuple[int, Path]]:
    """Finished checkpoints (`step-N` with a manifest), oldest first; temporaries ignored."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP.match(p.name))]
    return sorted((step, p) for step, p in found if (p / MANIFEST).is_file())


def newest_complete(root: Path) -> Path | None:
    """The newest checkpoint whose files all verify; a damaged newer one is skipped."""
    for _, folder in reversed(checkpoint_steps(root)):
        if is_complete(folder):
            return folder
    return None


def prune(root: Path, *, keep_last: int, best: Path | None) -> list[Path]:
    """Delete all but the newest `keep_last` checkpoints and `best`; leftover temporaries too."""
    steps = checkpoint_steps(root)
    keep = {p for _, p in steps[-keep_last:]} | ({best} if best else set())
    removed = [p for _, p in steps if p not in keep]
    removed += [p for p in root.glob(".step-*.tmp-*") if p.is_dir()]
    for folder in removed:
        shutil.rmtree(folder, ignore_errors=True)
    return removed
