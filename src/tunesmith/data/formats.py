"""Row formats, each turned into a `Conversation` (today: chat `messages`).

The message transform only: rows in, conversations out. Tokens are `formatting/`'s business.
"""

from __future__ import annotations

from tunesmith.data.sources import read_jsonl, resolve_data_path
from tunesmith.data.types import ROLES, Conversation, Message, Provenance
from tunesmith.errors import UserError


def load_conversations(reference: str, data_format: str = "auto") -> list[Conversation]:
    """Every row of a data file as a conversation; the first bad row stops with file:line, field."""
    path = resolve_data_path(reference)
    if path.suffix not in {".jsonl", ".json"}:
        raise UserError(f"{reference}: unsupported file type {path.suffix!r} (supported: .jsonl)")
    conversations = [_from_messages_row(row, where) for where, row in read_jsonl(path)]
    if not conversations:
        raise UserError(f"{reference}: the file has no rows")
    return conversations


def _from_messages_row(row: dict, where: Provenance) -> Conversation:
    if "messages" not in row:
        keys = ", ".join(sorted(row)) or "none"
        raise UserError(f"{where}: messages: row has no 'messages' list (its keys: {keys})")
    items = row["messages"]
    if not isinstance(items, list) or not items:
        raise UserError(f"{where}: messages: expected a non-empty list")
    messages = tuple(_message(item, where, f"messages[{i}]") for i, item in enumerate(items))
    if not any(m.role == "assistant" for m in messages):
        raise UserError(f"{where}: messages: no assistant message, so nothing would train")
    return Conversation(messages=messages, source=where, id=str(row.get("id", "")))


def _message(item: object, where: Provenance, field: str) -> Message:
    if not isinstance(item, dict):
        raise UserError(f"{where}: {field}: expected an object with role and content")
    role = item.get("role")
    if role not in ROLES:
        raise UserError(f"{where}: {field}.role: unknown role {role!r} (expected one of {', '.join(ROLES)})")
    content = item.get("content")
    if not isinstance(content, str):
        raise UserError(f"{where}: {field}.content: expected a string, got {type(content).__name__}")
    weight = item.get("weight")
    if weight not in (None, 0, 1):
        raise UserError(f"{where}: {field}.weight: expected 0 or 1, got {weight!r}")
    if weight is not None and role != "assistant":
        raise UserError(f"{where}: {field}.weight: only assistant messages take a weight")
    return Message(role=role, content=content, weight=None if weight is None else float(weight))

