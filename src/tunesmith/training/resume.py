"""Resuming a run, and stopping one so that it can be resumed.

`--resume` continues from the newest checkpoint whose manifest verifies (training/verify.py), through
the Trainer's own resume path (checkpoints.CheckpointMixin), so data order, LR schedule and RNG carry
on exactly. A newer checkpoint that fails its check (a hash mismatch, a missing file) is named and
moved to checkpoints/rejected/, never deleted. It
refuses when the processed data or the template differ from what the checkpoint was trained on
(the fingerprints stored in each checkpoint's tunesmith.json); other changed settings are listed
and the run goes on with the new values.

Stopping (SIGTERM, early stopping) and the training call itself are in training/fit.py.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tunesmith.config import Config, load_config, redact_config
from tunesmith.errors import UserError
from tunesmith.runfolder import MANIFEST, RunFolder, discard, write_bytes, write_text
from tunesmith.training import checkpoints as ck
from tunesmith.training import verify

_IGNORED_KEYS = {"name", "output_dir"}  # where the run lives, not how it trains


# --- which run, which checkpoint ---------------------------------------------------------------------


def load_run_config(reference: Config | str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """The config to resume with: a Config, a config file, or a run folder (its config.yaml, placed
    where the folder is now)."""
    if isinstance(reference, Config):
        config = reference
    elif Path(reference).is_dir():
        folder = Path(reference).expanduser().resolve()
        if not (folder / "config.yaml").is_file():
            raise UserError(f"{folder} is not a run folder (no config.yaml in it)")
        config = load_config(folder / "config.yaml", overrides)
        config = config.model_copy(update={"output_dir": str(folder.parent), "name": folder.name})
    else:
        config = load_config(reference, overrides)
    if config.name is None:
        raise UserError(
            "--resume needs to know the run: give its folder (tunesmith train runs/NAME --resume) "
            "or its name (--set name=NAME)"
        )
    return config


def find_checkpoint(run_dir: Path) -> Path:
    """The newest checkpoint of a run folder that verifies, or a UserError saying why there is none.
    Nothing is moved or removed here (a refused resume leaves the folder as it was): `discard_after`."""
    if not run_dir.is_dir():
        raise UserError(f"nothing to resume: run folder {run_dir} does not exist")
    manifest = run_dir / MANIFEST
    if manifest.is_file() and json.loads(manifest.read_text(encoding="utf-8")).get("status") == "completed":
        raise UserError(f"run {run_dir} already completed; nothing to resume")
    found, failed = verify.newest_verified(RunFolder(run_dir).checkpoints)
    if found is None or not (found / ck.TRAINER_STATE).is_file():
        why = f" ({'; '.join(reason for _, reason in failed)})" if failed else ""
        raise UserError(
            f"no complete checkpoint in {RunFolder(run_dir).checkpoints} to resume from{why}; "
            "start a new run under another name"
        )
    return found


@dataclass
class Discarded:
    """A checkpoint a resume will not use: `reason` and `moved_to` (under checkpoints/rejected/) for
    one that failed its check, neither for a half-written temporary, which is removed."""

    name: str
    reason: str | None = None
    moved_to: Path | None = None


def discard_after(checkpoint: Path) -> list[Discarded]:
    """Put away what a resume from `checkpoint` must never use: newer checkpoints (they failed their
    check, since `checkpoint` is the newest that verifies) are moved to checkpoints/rejected/, never
    deleted; half-written temporaries are removed."""
    root = checkpoint.parent
    step = int(checkpoint.name.split("-")[1])
    discarded = []
    for s, folder in reversed(ck.checkpoint_steps(root)):
        if s > step:
            reason = verify.problem(folder) or "newer than the newest checkpoint that verifies"
            discarded.append(Discarded(folder.name, reason, verify.reject(folder)))
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(".step-")):
        discard(folder)
        discarded.append(Discarded(folder.name))
    return discarded


# --- what the checkpoint was trained on --------------------------------------------------------------


def fingerprints(prepared: Any) -> dict[str, Any]:
    """What every checkpoint records about its inputs: the config, and digests of the template and,
    per training split, of its source files and processed examples."""
    from tunesmith.data.load import source_specs
    from tunesmith.training.prepare import _fingerprint

    config = prepared.config
    data = {}
    for split, processed in prepared.splits.items():
        files = [
            [spec.reference, _fingerprint(config, split, spec.reference)] for spec in source_specs(config.data, split)
        ]
        data[split] = {"files": files, "examples": examples_digest(processed.examples)}
    template = {"source": prepared.template.source, "special_tokens": prepared.template.special_tokens}
    return {
        "config": redact_config(config),
        "fingerprints": {"template": _digest(json.dumps(template, sort_keys=True).encode()), "data": data},
    }


def examples_digest(examples: list[Any]) -> str:
    """sha256 over every example's token ids and labels, in order (a preference row's sequences in turn,
    with its label)."""
    import numpy as np

    digest = hashlib.sha256()
    for row in examples:
        sequences = getattr(row, "sequences", (row,))
        if getattr(row, "desirable", None) is not None:
            digest.update(b"+" if row.desirable else b"-")
        for example in sequences:
            ids = np.asarray(example.input_ids, dtype=np.int64)
            digest.update(np.int64(len(ids)).tobytes() + ids.tobytes())
            digest.update(np.asarray(example.labels, dtype=np.int64).tobytes())
    return digest.hexdigest()


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_same_inputs(checkpoint: Path, current: dict[str, Any], changed: dict[str, tuple[Any, Any]]) -> None:
    """Refuse to resume when the template or the training data differ from the checkpoint's."""
    saved = ck.read_meta(checkpoint).get("fingerprints")
    now = current["fingerprints"]
    where = f"cannot resume from {checkpoint.name}"
    if saved is None:
        raise UserError(f"{where}: it records no data fingerprints (not written by this version of tunesmith)")
    if saved["template"] != now["template"]:
        keys = [k for k in changed if k.startswith("template.chat_template")] or ["the template source"]
        raise UserError(
            f"{where}: the chat template changed since it was written ({', '.join(keys)}); "
            "resume with the same template or start a new run"
        )
    for split in sorted(set(saved["data"]) | set(now["data"])):
        old, new = saved["data"].get(split), now["data"].get(split)
        if old is None or new is None:
            raise UserError(f"{where}: data.{split} was {'added' if old is None else 'removed'} since it was written")
        if [d for _, d in old["files"]] != [d for _, d in new["files"]]:
            files = [ref for (ref, d), (_, e) in zip(new["files"], old["files"]) if d != e] or [
                ref for ref, _ in new["files"]
            ]
            raise UserError(
                f"{where}: data.{split} changed since it was written ({', '.join(files)}); "
                "resume with the same data or start a new run"
            )
        if old["examples"] != new["examples"]:
            keys = [k for k in changed if k.startswith(("data.", "template.", "model.", "train.seed"))]
            cause = f" by {', '.join(keys)}" if keys else ""
            raise UserError(
                f"{where}: the processed data.{split} differs from what it was trained on{cause}; "
                "resume with the same settings or start a new run"
            )


def changed_settings(checkpoint: Path, config: Config) -> dict[str, tuple[Any, Any]]:
    """Config keys whose value differs from the config the checkpoint was trained with (the run
    folder's config.yaml if it records none): {key: (old, new)}."""
    saved = ck.read_meta(checkpoint).get("config")
    path = checkpoint.parent.parent / "config.yaml"
    if saved is None and path.is_file():
        saved = yaml.safe_load(path.read_text(encoding="utf-8"))
    old, new = _flatten(saved or {}), _flatten(redact_config(config))
    return {
        key: (old.get(key), new.get(key))
        for key in sorted(set(old) | set(new))
        if old.get(key) != new.get(key) and key not in _IGNORED_KEYS
    }


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat |= _flatten(value, name + ".")
        else:
            flat[name] = value
    return flat


@contextmanager
def config_kept_on_error(run_dir: Path) -> Iterator[None]:
    """Put the run folder's config.yaml back if the resumed run fails: a resume refused (say, for a
    changed lora.r) must not leave its settings behind for the next --resume to pick up."""
    path = RunFolder(run_dir).config
    before = path.read_bytes() if path.is_file() else None
    try:
        yield
    except BaseException:
        if before is not None:
            write_bytes(path, before)
        raise


def trim_metrics(path: Path, step: int) -> list[float]:
    """Drop metrics.jsonl records after `step` (logged by the run that died after its checkpoint);
    return the train losses that remain."""
    if not path.is_file():
        return []
    kept = [
        line
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip() and json.loads(line).get("step", 0) <= step
    ]
    write_text(path, "".join(line + "\n" for line in kept))
    return [float(record["loss"]) for record in map(json.loads, kept) if "loss" in record]


def describe_resume(checkpoint: Path, changed: dict[str, tuple[Any, Any]], discarded: list[Discarded]) -> list[str]:
    """The lines printed when a run resumes."""
    from rich.markup import escape

    meta = ck.read_meta(checkpoint)
    position = meta.get("data_position", {})
    lines = [
        f"Resuming from {escape(str(checkpoint))} (step {meta.get('step')}, epoch {position.get('epoch') or 0:.2f})"
    ]
    for item in discarded:
        if item.moved_to is None:
            continue
        where = item.moved_to.relative_to(checkpoint.parent.parent)
        lines.append(
            f"[yellow]warning:[/] {escape(str(item.reason))}: checkpoint {escape(item.name)} moved aside to "
            f"{escape(str(where))}, not resumed from"
        )
    removed = [d.name for d in discarded if d.moved_to is None]
    if removed:
        lines.append(f"[yellow]note:[/] ignored and removed incomplete checkpoints: {escape(', '.join(removed))}")
    if changed:
        settings = "; ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in changed.items())
        lines.append(
            f"[yellow]note:[/] settings changed since the run started, continuing with the new values: "
            f"{escape(settings)}"
        )
    return lines
