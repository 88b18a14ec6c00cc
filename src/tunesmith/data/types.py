"""Plain data types that flow out of `data/`: samples, where they came from, what is wrong with them.

A source yields `RawRow`s (a dict, or the reason it could not be read); a format adapter turns a
row into a `Sample`: a `Conversation` (chat), a `TextSample` (raw text, every token trains) or a
`TokenSample` (pre-tokenized). Every problem is an `Issue` naming file:line and the field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

Role = Literal["system", "user", "assistant", "tool"]
ROLES: tuple[Role, ...] = ("system", "user", "assistant", "tool")
Severity = Literal["error", "warning"]

IGNORE_INDEX = -100
"""The label of a position that is not trained (what PyTorch's cross-entropy and transformers skip)."""


@dataclass(frozen=True)
class Provenance:
    """Where a row came from: file and 1-based line (JSONL/JSON/CSV) or row number (Parquet, datasets)."""

    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


ARGUMENT_FORMS: tuple[str, ...] = ("given", "object", "string")
"""How `as_dict` writes tool-call arguments: as the data gave them, as an object, or as JSON text."""


@dataclass(frozen=True)
class ToolCall:
    """One function call an assistant message makes.

    `arguments` is exactly what the data gave: JSON text (as OpenAI sends it, kept even when it is
    not valid JSON) or an object (as many datasets and templates have it). Not hashable when it is
    an object; nothing hashes calls, messages or conversations (`Conversation.tools` holds dicts too).
    """

    name: str
    arguments: str | dict[str, Any]
    id: str | None = None

    @property
    def arguments_object(self) -> dict[str, Any] | None:
        """The arguments as an object: a given object as is, JSON text parsed; None when the text
        is not a JSON object."""
        if isinstance(self.arguments, dict):
            return self.arguments
        try:
            parsed = json.loads(self.arguments)
        except (ValueError, RecursionError):
            return None
        return parsed if isinstance(parsed, dict) else None

    @property
    def arguments_text(self) -> str:
        """The arguments as JSON text: given text as is, an object serialized (non-ASCII kept)."""
        if isinstance(self.arguments, dict):
            return json.dumps(self.arguments, ensure_ascii=False)
        return self.arguments

    def as_dict(self, arguments: str = "given") -> dict[str, Any]:
        """OpenAI form. `arguments`: "given" as the data gave them, "object" parsed where the text is
        a JSON object (other text stays text), "string" as JSON text.

        >>> ToolCall("f", '{"a": 1}').as_dict("object")["function"]
        {'name': 'f', 'arguments': {'a': 1}}
        """
        if arguments == "given":
            value: Any = self.arguments
        elif arguments == "object":
            value = self.arguments_object
            value = self.arguments if value is None else value
        elif arguments == "string":
            value = self.arguments_text
        else:
            raise ValueError(f"arguments must be one of {', '.join(ARGUMENT_FORMS)}, not {arguments!r}")
        call: dict[str, Any] = {"type": "function", "function": {"name": self.name, "arguments": value}}
        if self.id is not None:
            call["id"] = self.id
        return call


REASONING_KEYS: tuple[str, ...] = ("reasoning_content", "thinking", "reasoning")
"""Where a message carries its reasoning (Qwen3/DeepSeek, gpt-oss and others): read in this order,
all written by `Message.as_dict`, since each template reads its own."""


@dataclass(frozen=True)
class Message:
    role: Role
    content: str
    weight: float | None = None
    """0 or 1 on assistant messages: whether this turn trains. None means the `train_on` default."""
    tool_calls: tuple[ToolCall, ...] = ()
    name: str | None = None
    """For a tool message: the tool's name. Otherwise an optional participant name."""
    tool_call_id: str | None = None
    """For a tool message: the id of the call it answers, when the data gives one."""
    reasoning: str | None = None
    """For an assistant message: the reasoning (thinking) before its answer, when the data gives it."""

    def as_dict(self, arguments: str = "given") -> dict[str, Any]:
        """The `{"role", "content", ...}` form chat templates expect; optional keys only when set.
        Reasoning goes under every key of `REASONING_KEYS`; `arguments` as in `ToolCall.as_dict`."""
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.reasoning is not None:
            out.update(dict.fromkeys(REASONING_KEYS, self.reasoning))
        if self.tool_calls:
            out["tool_calls"] = [call.as_dict(arguments) for call in self.tool_calls]
        if self.name is not None:
            out["name"] = self.name
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        return out


@dataclass(frozen=True)
class Conversation:
    messages: tuple[Message, ...]
    source: Provenance
    id: str = ""
    tools: tuple[dict, ...] = field(default=())
    """Tool (function) JSON schemas offered in this conversation, as given."""
    prompt_messages: int | None = None
    """For prompt/completion rows: how many leading messages are the prompt (`train_on: completion`)."""

    def as_dicts(self, arguments: str = "given") -> list[dict[str, Any]]:
        """Messages in the form chat templates expect; `arguments` as in `ToolCall.as_dict`."""
        return [m.as_dict(arguments) for m in self.messages]


@dataclass(frozen=True)
class TextSample:
    """Raw text for continued pretraining: every token trains."""

    text: str
    source: Provenance
    id: str = ""


@dataclass(frozen=True)
class TokenSample:
    """Pre-tokenized row. `labels` None means every token trains; -100 marks untrained positions."""

    input_ids: tuple[int, ...]
    labels: tuple[int, ...] | None
    source: Provenance
    id: str = ""


Sample = Conversation | TextSample | TokenSample


@dataclass(frozen=True)
class Issue:
    """One data problem, with enough context to fix it without opening a debugger.

    >>> str(Issue("unknown_role", "error", Provenance("a.jsonl", 3), "messages[1].role", "unknown role 'bot'"))
    "a.jsonl:3: messages[1].role: unknown role 'bot'"
    """

    code: str
    severity: Severity
    where: Provenance
    field: str
    message: str
    hint: str = ""

    def __str__(self) -> str:
        hint = f" ({self.hint})" if self.hint else ""
        place = f"{self.where}: {self.field}: " if self.field else f"{self.where}: "
        return f"{place}{self.message}{hint}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "severity": self.severity,
            "file": self.where.file,
            "line": self.where.line,
            "field": self.field,
            "message": self.message,
            "hint": self.hint,
        }


class RowError(Exception):
    """Raised by a format adapter for a row it cannot normalize; carries the `Issue`."""

    def __init__(self, issue: Issue):
        super().__init__(str(issue))
        self.issue = issue


@dataclass(frozen=True)
class RawRow:
    """One row as a source read it.

    `data` is None when the row could not be read at all (invalid JSON, bad UTF-8, not an object),
    and `issue` says why (severity error). When `data` is set, `issue` may hold a warning about
    how it was read (e.g. a byte-order mark).
    """

    where: Provenance
    data: dict[str, Any] | None
    issue: Issue | None = None
