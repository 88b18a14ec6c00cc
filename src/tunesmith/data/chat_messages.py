"""OpenAI chat messages (role, content, tool_calls, ...) to `Message`s.

Shared by the `messages` and `prompt_completion` adapters. Also read: reasoning under any of
`REASONING_KEYS`, and LLaMA-Factory v1's `{"type": "text", "value"}` parts and `loss_weight`.
Keys a message has beyond the ones read here (OpenAI's `refusal`, `audio`, `annotations`, or
anyone's extras) are ignored: no chat template renders them. Image, audio and video parts are
refused (`vision_row`): they must never train as text.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from tunesmith.data.types import REASONING_KEYS, ROLES, Message, Provenance, Role, ToolCall
from tunesmith.data.values import as_dict, as_list, fail, kind, message_weight, optional_str, short, text

# OpenAI's newer `developer` and legacy `function` roles, under the names templates know.
MESSAGE_ROLES: Mapping[str, Role] = {**{role: role for role in ROLES}, "developer": "system", "function": "tool"}
# Content part types of other media (OpenAI, Anthropic-style and LLaMA-Factory names), by medium.
MEDIA_PARTS: Mapping[str, str] = {
    "image": "image",
    "image_url": "image",
    "input_image": "image",
    "video": "video",
    "video_url": "video",
    "audio": "audio",
    "audio_url": "audio",
    "input_audio": "audio",
}
VISION_HINT = "vision models are not supported; remove the images or the rows"


def messages(value: Any, where: Provenance, field: str) -> tuple[Message, ...]:
    """A list of OpenAI chat messages; errors name `field[i].key`."""
    return tuple(message(item, where, f"{field}[{i}]") for i, item in enumerate(as_list(value, where, field)))


def message(item: Any, where: Provenance, field: str) -> Message:
    if not isinstance(item, dict):
        fail(where, "wrong_type", field, f"expected an object with role and content, got {kind(item)}")
    if "role" not in item:
        fail(where, "missing_key", f"{field}.role", "missing")
    role = item["role"]
    if not isinstance(role, str) or role not in MESSAGE_ROLES:
        fail(
            where,
            "unknown_role",
            f"{field}.role",
            f"unknown role {short(role)}",
            f"expected one of {', '.join(MESSAGE_ROLES)}",
        )
    calls = tool_calls(item, where, field)
    role = MESSAGE_ROLES[role]
    return Message(
        role,
        content(item, where, field, bool(calls)),
        message_weight(item, role, where, field),
        calls,
        optional_str(item.get("name"), where, f"{field}.name"),
        optional_str(item.get("tool_call_id"), where, f"{field}.tool_call_id"),
        reasoning(item, where, field),
    )


def reasoning(item: dict, where: Provenance, field: str) -> str | None:
    """The first of `REASONING_KEYS` that holds text; null and "" mean none (and the next key is read)."""
    for key in REASONING_KEYS:
        value = item.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            fail(where, "wrong_type", f"{field}.{key}", f"expected a string, got {kind(value)}")
        if value:
            return value
    return None


def content(item: dict, where: Provenance, field: str, has_calls: bool) -> str:
    """A string, or text parts joined with ""; null (or absent) only beside tool calls, as ""."""
    if item.get("content") is None:
        if has_calls:
            return ""
        if "content" not in item:
            fail(where, "missing_key", f"{field}.content", "missing")
        fail(
            where,
            "wrong_type",
            f"{field}.content",
            "expected a string, got null",
            "only a message with tool_calls may have null content",
        )
    value = item["content"]
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        fail(where, "wrong_type", f"{field}.content", f"expected a string or a list of text parts, got {kind(value)}")
    return "".join(text_part(part, where, f"{field}.content[{i}]") for i, part in enumerate(value))


def text_part(part: Any, where: Provenance, field: str) -> str:
    if not isinstance(part, dict):
        fail(where, "wrong_type", field, f"expected a content part {{type, text}}, got {kind(part)}")
    if "type" not in part:
        fail(where, "missing_key", f"{field}.type", "missing")
    kind_ = part["type"]
    if isinstance(kind_, str) and kind_ in MEDIA_PARTS:
        fail(where, "vision_row", field, f"{MEDIA_PARTS[kind_]} content is not supported yet", VISION_HINT)
    if kind_ != "text":
        fail(
            where,
            "unsupported_content",
            field,
            f"content part of type {short(kind_)} is not supported",
            "only text parts can be trained",
        )
    key = "value" if "text" not in part and "value" in part else "text"  # LLaMA-Factory v1 says value
    if key not in part:
        fail(where, "missing_key", f"{field}.text", "missing")
    return text(part[key], where, f"{field}.{key}")


def tool_calls(item: dict, where: Provenance, field: str) -> tuple[ToolCall, ...]:
    """`tool_calls`, plus OpenAI's legacy single `function_call`, as `ToolCall`s."""
    calls: list[ToolCall] = []
    if item.get("tool_calls") not in (None, ""):
        path = f"{field}.tool_calls"
        calls += [tool_call(c, where, f"{path}[{i}]") for i, c in enumerate(as_list(item["tool_calls"], where, path))]
    if item.get("function_call") is not None:
        calls.append(tool_call(item["function_call"], where, f"{field}.function_call"))
    return tuple(calls)


def tool_call(value: Any, where: Provenance, field: str) -> ToolCall:
    """`{"id"?, "type": "function", "function": {"name", "arguments"}}`, or the flat `{"name", "arguments"}`."""
    call = as_dict(value, where, field)
    if call.get("type", "function") != "function":
        fail(
            where,
            "unsupported_content",
            f"{field}.type",
            f"tool call of type {short(call['type'])} is not supported",
            "only function calls",
        )
    function, path = (call, field) if "function" not in call else (call["function"], f"{field}.function")
    function = as_dict(function, where, path)
    if "name" not in function:
        fail(where, "missing_key", f"{path}.name", "missing")
    name = text(function["name"], where, f"{path}.name")
    return ToolCall(
        name, arguments(function, where, f"{path}.arguments"), optional_str(call.get("id"), where, f"{field}.id")
    )


def arguments(function: dict, where: Provenance, field: str) -> str | dict:
    """As given: JSON text (as OpenAI sends it) or an object, which must be writable as JSON."""
    if "arguments" not in function:
        fail(where, "missing_key", field, "missing", 'a call without arguments takes "arguments": {}')
    value = function["arguments"]
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        try:
            json.dumps(value, ensure_ascii=False)
            return value
        except (TypeError, ValueError, RecursionError) as err:
            fail(where, "bad_tool_call", field, f"arguments cannot be written as JSON: {err}")
    fail(where, "bad_tool_call", field, f"expected an object or its JSON text, got {kind(value)}")
