"""How rows are read: the `data.format`, `data.columns` and `data.roles` settings, checked.

Its own module so that the adapters (data/adapters.py) and format detection (data/formats.py) both
depend on it and not on each other.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from tunesmith.data.types import ROLES
from tunesmith.errors import UserError

FUNCTION_CALL = "function_call"
"""ShareGPT speaker whose `value` is a JSON function call `{"name", "arguments"}` (or a list of them)."""
FORMATS: tuple[str, ...] = ("messages", "sharegpt", "alpaca", "qa", "prompt_completion", "text", "tokens")
CANONICAL_KEYS: tuple[str, ...] = (
    "messages",
    "tools",
    "id",
    "conversations",
    "from",
    "value",
    "system",
    "instruction",
    "input",
    "output",
    "history",
    "question",
    "answer",
    "prompt",
    "completion",
    "text",
    "input_ids",
    "labels",
)


@dataclass(frozen=True)
class FormatOptions:
    """How to read rows: the `data.format`, `data.columns` and `data.roles` settings."""

    format: str = "auto"
    """`auto` (detect from each row's keys) or one of `FORMATS`, which skips detection."""
    columns: Mapping[str, str] = field(default_factory=dict)
    """Canonical key -> the file's key, e.g. `{"instruction": "task", "output": "answer"}`."""
    roles: Mapping[str, str] = field(default_factory=dict)
    """ShareGPT `from` value -> our role (or `function_call`), merged over the defaults."""

    def __post_init__(self) -> None:
        if self.format not in ("auto", *FORMATS):
            raise UserError(f"data.format: unknown format {self.format!r} (one of auto, {', '.join(FORMATS)})")
        for key, name in self.columns.items():
            if key not in CANONICAL_KEYS:
                raise UserError(f"data.columns: unknown key {key!r} (one of {', '.join(CANONICAL_KEYS)})")
            if not isinstance(name, str) or not name:
                raise UserError(f"data.columns.{key}: expected the file's key name, got {name!r}")
        targets = (*ROLES, FUNCTION_CALL)
        for speaker, role in self.roles.items():
            if role not in targets:
                raise UserError(f"data.roles.{speaker}: unknown role {role!r} (one of {', '.join(targets)})")
        # Read-only copies: options are shared by every row and must not change under them.
        object.__setattr__(self, "columns", MappingProxyType(dict(self.columns)))
        object.__setattr__(self, "roles", MappingProxyType(dict(self.roles)))
