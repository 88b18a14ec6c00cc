"""Find data files and read their rows with line numbers.

`bundled:NAME/FILE` names data shipped inside the package (the quick start's task).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

from tunesmith.data.types import Provenance
from tunesmith.errors import UserError

BUNDLED_PREFIX = "bundled:"


def resolve_data_path(reference: str) -> Path:
    """Turn a data reference into an existing file path, or fail naming it.

    >>> resolve_data_path("bundled:smart_home/test.jsonl").name
    'test.jsonl'
    """
    if reference.startswith(BUNDLED_PREFIX):
        relative = reference[len(BUNDLED_PREFIX) :]
        path = Path(str(resources.files("tunesmith") / "data" / "bundled" / relative))
        if not path.is_file():
            known = sorted(p.name for p in path.parent.parent.iterdir() if p.is_dir()) if path.parent.parent.is_dir() else []
            raise UserError(f"bundled data not found: {reference} (bundled sets: {', '.join(known)})")
        return path
    path = Path(reference).expanduser()
    if not path.is_file():
        raise UserError(f"data file not found: {reference}")
    return path


def read_jsonl(path: Path) -> Iterator[tuple[Provenance, dict]]:
    """Yield (file:line, object) for every non-blank line; a broken line is a UserError."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            where = Provenance(str(path), number)
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise UserError(f"{where}: not valid UTF-8 (byte {err.start})") from None
            if number == 1 and text.startswith("\ufeff"):
                text = text[1:]
            try:
                row = json.loads(text)
            except json.JSONDecodeError as err:
                raise UserError(f"{where}: invalid JSON: {err.msg} (column {err.colno})") from None
            if not isinstance(row, dict):
                raise UserError(f"{where}: expected a JSON object, got {type(row).__name__}")
            yield where, row
