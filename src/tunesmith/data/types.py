"""Plain data types that flow out of `data/`: messages, conversations, where they came from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Role = Literal["system", "user", "assistant", "tool"]
ROLES: tuple[str, ...] = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class Provenance:
    """Where a row came from: file and 1-based line (or row number for tabular files)."""

    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class Message:
    role: Role
    content: str
    weight: float | None = None
    """0 or 1 on assistant messages: whether this turn trains. None means the `train_on` default."""


@dataclass(frozen=True)
class Conversation:
    messages: tuple[Message, ...]
    source: Provenance
    id: str = ""
    tools: tuple[dict, ...] = field(default=())

    def as_dicts(self) -> list[dict[str, str]]:
        """Messages in the `{"role", "content"}` form chat templates expect."""
        return [{"role": m.role, "content": m.content} for m in self.messages]


@dataclass(frozen=True)
class Issue:
    """One data problem, with enough context to fix it without opening a debugger."""

    code: str
    severity: Literal["error", "warning"]
    where: Provenance
    field: str
    message: str
    hint: str = ""

    def __str__(self) -> str:
        hint = f" ({self.hint})" if self.hint else ""
        return f"{self.where}: {self.field}: {self.message}{hint}"
