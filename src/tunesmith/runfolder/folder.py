"""The run folder's layout and its life: created only after every check passed, removed again if
the user's input turns out wrong, marked failed (or interrupted) on anything else.

    RUN/config.yaml          the config as run (secrets redacted)
    RUN/data_report.json     per split: rows, tokens, trainable share, warnings, cache hits
    RUN/quarantine.jsonl     rows left out under on_bad_row: skip, each with its issues
    RUN/metrics.jsonl        one line per logged step (loss, lr, tokens/s, memory) and eval
    RUN/reference_logps.safetensors  a preference run's reference log-probabilities (computed once)
    RUN/checkpoints/step-N/  weights, optimizer, scheduler, RNG, data position; its own manifest
    RUN/adapter/ or model/   the weights with the tokenizer and tunesmith.json (the run record)
    RUN/eval/                results.json and samples.jsonl (tuned vs base)
    RUN/report.html, loss.png
    RUN/merged/, RUN/export/ written later by tunesmith merge / export
    RUN/manifest.json        the seal, written last: status and the sha256 of every file above"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tunesmith.errors import UserError
from tunesmith.runfolder.disk import is_disk_full
from tunesmith.runfolder.manifest import MANIFEST, write_manifest


@dataclass(frozen=True)
class RunFolder:
    """Where each stage's files go in a run folder."""

    path: Path

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def data_report(self) -> Path:
        return self.path / "data_report.json"

    @property
    def quarantine(self) -> Path:
        return self.path / "quarantine.jsonl"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def reference_logps(self) -> Path:
        return self.path / "reference_logps.safetensors"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def eval(self) -> Path:
        return self.path / "eval"

    @property
    def report(self) -> Path:
        return self.path / "report.html"

    @property
    def merged(self) -> Path:
        return self.path / "merged"

    @property
    def export(self) -> Path:
        return self.path / "export"

    @property
    def manifest(self) -> Path:
        return self.path / MANIFEST

    @property
    def cloud(self) -> Path:
        """A hosted run's provider, job and file ids (tunesmith cloud)."""
        return self.path / "cloud.json"

    @property
    def download(self) -> Path:
        """A hosted run's downloads while they arrive (`.part` files, resumed after an interruption)."""
        return self.path / "download"

    @property
    def upload(self) -> Path:
        """What a hosted run uploaded: the training data as the provider received it."""
        return self.path / "upload"

    def weights(self, method: str) -> Path:
        """adapter/ (LoRA, QLoRA) or model/ (full)."""
        return self.path / ("model" if method == "full" else "adapter")


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
        checkpoints = RunFolder(path).checkpoints
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
