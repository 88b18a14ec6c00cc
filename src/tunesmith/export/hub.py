"""Push a finished run to the Hugging Face Hub: the adapter (or a full fine-tune's model/), the merged
model, or the GGUF export, with a generated model card (README.md).

`push_run` first builds a `PushPlan` (which files go where, and the card) from the run folder alone,
so `--dry-run` touches no network and needs no token. The upload is one commit through
huggingface_hub's documented API (`HfApi.create_repo`, `HfApi.create_commit`). The token goes only
to `HfApi`: never into a command line, a log line or the card.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.config.redact import redact_text, redact_tree
from tunesmith.errors import TunesmithError, UserError
from tunesmith.runfolder import RunFolder, RunRecord, weights_folder

WHATS = ("adapter", "merged", "gguf")
CARD = "README.md"
DEFAULT_ENDPOINT = "https://huggingface.co"


# One part of "namespace/name": ASCII letters, digits, '-', '_', '.', not starting or ending with
# '-' or '.', no '--' or '..', at most 96 characters (huggingface_hub's validate_repo_id rules).
REPO_PART = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?")

Log = Callable[[str], None]


@dataclass
class PushPlan:
    """What a push uploads: (local file, path in the repo, size in bytes) for each file, plus the card
    (uploaded as README.md, replacing any README.md in the source folder)."""

    repo_id: str
    what: str
    files: list[tuple[Path, str, int]]
    card: str
    source: Path | None = None  # the folder the files come from (export/ for gguf)
    private: bool = False
    commit_url: str | None = None  # set once the upload succeeded

    @property
    def total_bytes(self) -> int:
        return sum(size for _, _, size in self.files) + len(self.card.encode("utf-8"))

    def listing(self) -> list[str]:
        """One line per uploaded file, README.md last: `path_in_repo  size`."""
        rows = [(path, size) for _, path, size in self.files] + [(CARD, len(self.card.encode("utf-8")))]
        width = max(len(path) for path, _ in rows)
        return [f"  {path.ljust(width)}  {human_size(size):>9}" for path, size in rows]


def human_size(size: int) -> str:
    """
    >>> human_size(512), human_size(19593064)
    ('512 B', '18.7 MiB')
    """
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def validate_repo_id(repo_id: str) -> str:
    """Check a Hub model id has the form `user/repo` with the Hub's allowed characters.

    >>> validate_repo_id("alice/smart-home_v1.2")
    'alice/smart-home_v1.2'
    """
    parts = repo_id.split("/")
    good = (
        len(parts) == 2
        and all(REPO_PART.fullmatch(p) for p in parts)
        and "--" not in repo_id
        and ".." not in repo_id
        and not repo_id.endswith(".git")
    )
    if not good:
        raise UserError(
            f"invalid Hub repo id {repo_id!r}: expected `user/repo` (or `org/repo`), each part made of "
            "letters, digits, '-', '_' and '.', not starting or ending with '-' or '.', no '--' or "
            "'..', at most 96 characters"
        )
    return repo_id


def resolve_token(token: str | None = None) -> str:
    """The token to push with: the argument, else HF_TOKEN, else the user's saved login."""
    found = (token or "").strip() or os.environ.get("HF_TOKEN", "").strip()
    if not found:
        from huggingface_hub import get_token

        found = (get_token() or "").strip()
    if not found:
        raise UserError(
            "no Hugging Face token: log in with `hf auth login`, or set HF_TOKEN to a token with write "
            "access (https://huggingface.co/settings/tokens)"
        )
    return found


# ---------------------------------------------------------------------------------------------- plan


def plan_push(run_dir: str | Path, repo_id: str, what: str = "adapter", *, private: bool = False) -> PushPlan:
    """Everything a push will upload, read from the run folder only (no network, no token)."""
    validate_repo_id(repo_id)
    if what not in WHATS:
        raise UserError(f"unknown push target {what!r}: choose one of {', '.join(WHATS)}")
    run = Path(run_dir)
    if not run.is_dir():
        raise UserError(f"run folder not found: {run_dir}")
    meta = RunRecord.read(weights_folder(run), strict=False)  # weights_folder: UserError if the run is not finished
    if what == "adapter":
        source = weights_folder(run)
        files = _folder_files(source)
    elif what == "merged":
        source = RunFolder(run).merged
        files = _folder_files(source) if source.is_dir() else []
        if not files:
            raise UserError(
                f"{run} has no merged model (merged/); make one with `tunesmith merge {run}` first, or push the adapter"
            )
    else:
        source = run / "export"
        ggufs = sorted(source.glob("*.gguf")) if source.is_dir() else []
        if not ggufs:
            raise UserError(
                f"{run} has no GGUF export (export/*.gguf); make one with `tunesmith export gguf {run}` first"
            )
        extra = [source / "Modelfile"] if (source / "Modelfile").is_file() else []
        files = [(p, p.name, p.stat().st_size) for p in ggufs + extra]
    from tunesmith.export.model_card import model_card  # it reads the run with this module's helpers

    card = model_card(run, repo_id, what, meta=meta, files=[path for _, path, _ in files], source=source)
    return PushPlan(repo_id=repo_id, what=what, files=files, card=card, source=source, private=private)


def _folder_files(folder: Path) -> list[tuple[Path, str, int]]:
    """Every file under `folder` except hidden ones and its own README.md (the card replaces it)."""
    found = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if not path.is_file() or rel == CARD or any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue
        found.append((path, rel, path.stat().st_size))
    return found


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def read_run_config(run: Path) -> dict:
    import yaml

    try:
        loaded = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    except (FileNotFoundError, yaml.YAMLError):
        return {}
    return redact_tree(loaded) if isinstance(loaded, dict) else {}  # a run folder from before redaction too


# ---------------------------------------------------------------------------------------------- push


def push_run(
    run_dir: str | Path,
    repo_id: str,
    *,
    what: str = "adapter",
    private: bool = False,
    dry_run: bool = False,
    token: str | None = None,
    endpoint: str | None = None,
    log: Log = print,
) -> PushPlan:
    """Upload a finished run to the Hub as `repo_id` (created if missing) in one commit.

    `what`: "adapter" (adapter/, or model/ of a full fine-tune), "merged" (merged/) or "gguf"
    (export/*.gguf and export/Modelfile). `dry_run`: only log and return the plan. `token`: default
    HF_TOKEN, else the saved login. `endpoint`: default the Hub (or HF_ENDPOINT).
    """
    plan = plan_push(run_dir, repo_id, what, private=private)
    run = Path(run_dir)
    if what == "adapter" and plan.source is not None and plan.source.name == "model":
        log(f"{run} is a full fine-tune: pushing model/ (the whole model, not an adapter)")
    url = f"{(endpoint or os.environ.get('HF_ENDPOINT') or DEFAULT_ENDPOINT).rstrip('/')}/{repo_id}"
    source = plan.source.relative_to(run) if plan.source is not None else "."
    header = redact_text(
        f"{len(plan.files) + 1} files, {human_size(plan.total_bytes)}, from {run}/{source} "
        f"to {url}{' (private)' if private else ''}"
    )  # HF_ENDPOINT may carry credentials
    if dry_run:
        log(f"dry run: would upload {header}")
        for line in plan.listing():
            log(line)
        return plan

    secret = resolve_token(token)
    from huggingface_hub import CommitOperationAdd, HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if constants.is_offline_mode():
        raise UserError("HF_HUB_OFFLINE is set: unset it to push to the Hub")
    log(f"uploading {header}")
    for line in plan.listing():
        log(line)
    api = HfApi(endpoint=endpoint, token=secret, library_name="tunesmith", library_version=_version())
    operations = [CommitOperationAdd(path_in_repo=path, path_or_fileobj=str(local)) for local, path, _ in plan.files]
    operations.append(CommitOperationAdd(path_in_repo=CARD, path_or_fileobj=plan.card.encode("utf-8")))
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        info = api.create_commit(
            repo_id, operations, repo_type="model", commit_message=f"tunesmith push: {what} of run {run.name}"
        )
    except OfflineModeIsEnabled:
        raise UserError("HF_HUB_OFFLINE is set: unset it to push to the Hub") from None
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else None
        if status in (401, 403):
            raise UserError(
                f"the Hub refused the push to {repo_id} (HTTP {status}): the token needs write access to "
                f"{repo_id.split('/')[0]} (`hf auth login`, or HF_TOKEN)"
            ) from None
        raise TunesmithError(redact_text(f"push to {repo_id} failed: {_first_line(err)}")) from None
    except _transport_errors() as err:  # connection refused, DNS, TLS
        raise TunesmithError(redact_text(f"push to {repo_id} failed: cannot reach {url}: {err}")) from None
    plan.commit_url = str(getattr(info, "commit_url", "") or url)
    if private:
        log("note: --private applies when the repo is created; an existing repo keeps its visibility")
    log(redact_text(f"pushed: {url}"))
    return plan


def _transport_errors() -> tuple[type[BaseException], ...]:
    try:
        import httpx2

        return (OSError, httpx2.TransportError)
    except ImportError:  # pragma: no cover
        return (OSError,)


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("tunesmith")
    except metadata.PackageNotFoundError:  # pragma: no cover
        return "0"


# ---------------------------------------------------------------------------------------------- card
