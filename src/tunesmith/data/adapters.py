"""Format adapters: one function per row format, each turning a row into a normalized `Sample`.

The message transform only (torchtune's split): a row in, a `Conversation`, `TextSample` or
`TokenSample` out; tokens are `formatting/`'s business. An adapter fails (`RowError`) only on what
stops it normalizing the row: a missing key, a wrong type, an unknown role, a bad weight. Whether
the result makes sense (empty content, no assistant turn, roles out of order) is the validator's
question, asked of the normalized sample.

Nothing is stringified: a number where text belongs is a `wrong_type` error. A list or object that
arrives as JSON text (a CSV cell) is decoded; text that may be text (content, prompt) is left alone.
Error fields use the file's own key names, e.g. `conversations[2].from` or `task` for a renamed
`instruction`. Keys a message has beyond the ones read here (OpenAI's `refusal`, `audio`,
`annotations`, or anyone's extras) are ignored: no chat template renders them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from numbers import Integral
from typing import Any, cast

from tunesmith.data.chat_messages import messages, tool_call
from tunesmith.data.options import FUNCTION_CALL, FormatOptions
from tunesmith.data.types import (
    IGNORE_INDEX,
    ROLES,
    Conversation,
    Message,
    Provenance,
    Role,
    Sample,
    TextSample,
    TokenSample,
    ToolCall,
)
from tunesmith.data.values import as_dict, as_list, decoded, fail, kind, message_weight, short, text

SHAREGPT_ROLES: Mapping[str, str] = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "model": "assistant",
    "system": "system",
    "observation": "tool",
    "tool": "tool",
    "function_response": "tool",
    "function_call": FUNCTION_CALL,
}


class Fields:
    """One row under adaptation: its values by canonical key (`columns` applied), errors naming them."""

    def __init__(self, row: dict, where: Provenance, options: FormatOptions):
        self.row, self.where, self.options = row, where, options

    def key(self, canonical: str) -> str:
        return self.options.columns.get(canonical, canonical)

    def has(self, canonical: str) -> bool:
        return self.key(canonical) in self.row

    def get(self, canonical: str) -> Any:
        return self.row.get(self.key(canonical))

    def required(self, canonical: str) -> Any:
        if not self.has(canonical):
            renamed = self.key(canonical) != canonical
            hint = (
                f"data.columns maps {canonical} to it"
                if renamed
                else f"if your file names it differently, set data.columns: {{{canonical}: YOUR_KEY}}"
            )
            fail(self.where, "missing_key", self.key(canonical), "missing", hint)
        return self.get(canonical)

    def optional_text(self, canonical: str) -> str:
        """A string cell where missing, null and "" (an empty CSV cell) all mean none."""
        value = self.get(canonical)
        return "" if value is None else text(value, self.where, self.key(canonical))

    def id(self) -> str:
        value = self.get("id")
        if value is None or isinstance(value, str):
            return value or ""
        if isinstance(value, Integral) and not isinstance(value, bool):
            return str(value)
        fail(self.where, "wrong_type", self.key("id"), f"expected a string or an integer, got {kind(value)}")

    def tools(self) -> tuple[dict, ...]:
        """A list of tool schemas, or its JSON text (a CSV cell; LLaMA-Factory's ShareGPT rows)."""
        value = self.get("tools")
        if value is None or value == "":
            return ()
        field = self.key("tools")
        return tuple(
            as_dict(item, self.where, f"{field}[{i}]") for i, item in enumerate(as_list(value, self.where, field))
        )

    def system(self) -> list[Message]:
        content = self.optional_text("system")
        return [Message("system", content)] if content else []

    def conversation(
        self, messages: list[Message] | tuple[Message, ...], prompt_messages: int | None = None
    ) -> Conversation:
        return Conversation(tuple(messages), self.where, self.id(), self.tools(), prompt_messages)


# --- one adapter per format --------------------------------------------------------------------------


def from_messages(f: Fields) -> Conversation:
    """OpenAI chat: `{"messages": [{role, content, ...}], "tools"?, "id"?}`."""
    return f.conversation(messages(f.required("messages"), f.where, f.key("messages")))


def from_sharegpt(f: Fields) -> Conversation:
    """ShareGPT: `{"conversations": [{from, value}], "system"?, "tools"?}`; speakers map through `data.roles`."""
    roles = {**SHAREGPT_ROLES, **f.options.roles}
    field = f.key("conversations")
    turns = as_list(f.required("conversations"), f.where, field)
    return f.conversation(f.system() + [sharegpt_turn(t, f, roles, f"{field}[{i}]") for i, t in enumerate(turns)])


def sharegpt_turn(item: Any, f: Fields, roles: Mapping[str, str], field: str) -> Message:
    who, what = f.key("from"), f.key("value")
    if not isinstance(item, dict):
        fail(f.where, "wrong_type", field, f"expected an object with {who} and {what}, got {kind(item)}")
    for key in (who, what):
        if key not in item:
            fail(f.where, "missing_key", f"{field}.{key}", "missing")
    speaker = item[who]
    if not isinstance(speaker, str) or speaker not in roles:
        fail(
            f.where,
            "unknown_role",
            f"{field}.{who}",
            f"unknown speaker {short(speaker)} (known: {', '.join(roles)})",
            f"map it to one of {', '.join(ROLES)} with data.roles",
        )
    # every speaker maps to one of ROLES or FUNCTION_CALL (SHAREGPT_ROLES, and data.roles as FormatOptions checked)
    role = "assistant" if roles[speaker] == FUNCTION_CALL else cast(Role, roles[speaker])
    turn_weight = message_weight(item, role, f.where, field)
    if roles[speaker] == FUNCTION_CALL:
        return Message("assistant", "", turn_weight, function_calls(item[what], f.where, f"{field}.{what}"))
    return Message(role, text(item[what], f.where, f"{field}.{what}"), turn_weight)


def function_calls(value: Any, where: Provenance, field: str) -> tuple[ToolCall, ...]:
    """A ShareGPT function-call turn: JSON `{"name", "arguments"}` or a list of them."""
    parsed = decoded(decoded(value, dict), list)
    if isinstance(parsed, dict):
        return (tool_call(parsed, where, field),)
    if isinstance(parsed, list):
        return tuple(tool_call(call, where, f"{field}[{i}]") for i, call in enumerate(parsed))
    fail(where, "bad_tool_call", field, f'expected a JSON function call {{"name", "arguments"}}, got {kind(parsed)}')


def from_alpaca(f: Fields) -> Conversation:
    """Alpaca: `instruction`, `input`?, `output`, plus `system`? and `history` [[user, assistant], ...]?.

    Messages: [system] + each history pair as user, assistant + user + assistant(output). The user
    turn is the instruction, then a blank line and the input when the input is non-empty:
    `{"instruction": "Translate.", "input": "Bonjour"}` → user "Translate.\\n\\nBonjour".
    """
    instruction = text(f.required("instruction"), f.where, f.key("instruction"))
    output = text(f.required("output"), f.where, f.key("output"))
    extra = f.optional_text("input")
    prompt = f"{instruction}\n\n{extra}" if extra else instruction
    return f.conversation(f.system() + history(f) + [Message("user", prompt), Message("assistant", output)])


def history(f: Fields) -> list[Message]:
    value, field = f.get("history"), f.key("history")
    if value is None or value == "":
        return []
    turns: list[Message] = []
    for i, pair in enumerate(as_list(value, f.where, field)):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            fail(f.where, "wrong_type", f"{field}[{i}]", f"expected a [user, assistant] pair, got {kind(pair)}")
        turns += [
            Message("user", text(pair[0], f.where, f"{field}[{i}][0]")),
            Message("assistant", text(pair[1], f.where, f"{field}[{i}][1]")),
        ]
    return turns


def from_qa(f: Fields) -> Conversation:
    """Question and answer: [system] + user(question) + assistant(answer)."""
    question = text(f.required("question"), f.where, f.key("question"))
    answer = text(f.required("answer"), f.where, f.key("answer"))
    return f.conversation(f.system() + [Message("user", question), Message("assistant", answer)])


def from_prompt_completion(f: Fields) -> Conversation:
    """`prompt` + `completion`: strings become one user and one assistant turn; lists of messages
    (TRL's conversational form) are read as chat messages, prompt's then completion's."""
    prompt = prompt_side(f.required("prompt"), f.where, f.key("prompt"), "user")
    completion = prompt_side(f.required("completion"), f.where, f.key("completion"), "assistant")
    return f.conversation(prompt + completion, prompt_messages=len(prompt))


def prompt_side(value: Any, where: Provenance, field: str, role: Role) -> tuple[Message, ...]:
    if isinstance(value, str):
        if not is_chat_json(value):
            return (Message(role, value),)
        value = json.loads(value)
    if not isinstance(value, (list, tuple)):
        fail(where, "wrong_type", field, f"expected a string or a list of messages, got {kind(value)}")
    return messages(value, where, field)


def is_chat_json(value: str) -> bool:
    """Whether a string is a JSON list of `{"role": ...}` objects: a conversational cell from CSV.

    Only that shape is decoded; any other text stays text.
    >>> is_chat_json('[{"role": "user", "content": "hi"}]'), is_chat_json("[1, 2]")
    (True, False)
    """
    parsed = decoded(value, list)
    return (
        isinstance(parsed, list)
        and bool(parsed)
        and all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in parsed)
    )


def from_text(f: Fields) -> TextSample:
    """Raw text: `text` (or a string `content`); every token trains."""
    field = "content" if not f.has("text") and "content" in f.row else f.key("text")
    value = f.row["content"] if field == "content" else f.required("text")
    return TextSample(text(value, f.where, field), f.where, f.id())


def from_tokens(f: Fields) -> TokenSample:
    """Pre-tokenized: `input_ids` (non-negative ints), `labels`? of the same length (ints ≥ 0 or -100)."""
    field = f.key("input_ids")
    ids = token_ids(f.required("input_ids"), f.where, field, allow_ignored=False)
    labels_value, labels_field = f.get("labels"), f.key("labels")
    if labels_value is None or labels_value == "":
        return TokenSample(ids, None, f.where, f.id())
    labels = token_ids(labels_value, f.where, labels_field, allow_ignored=True)
    if len(labels) != len(ids):
        fail(
            f.where,
            "bad_labels",
            labels_field,
            f"{len(labels)} labels for {len(ids)} input_ids",
            "labels must line up with input_ids, one per token",
        )
    return TokenSample(ids, labels, f.where, f.id())


def token_ids(value: Any, where: Provenance, field: str, allow_ignored: bool) -> tuple[int, ...]:
    ids = as_list(value, where, field)
    for i, token in enumerate(ids):
        if not isinstance(token, Integral) or isinstance(token, bool):
            fail(where, "wrong_type", f"{field}[{i}]", f"expected an integer, got {kind(token)}")
        if token < 0 and not (allow_ignored and token == IGNORE_INDEX):
            allowed = "≥ 0 or -100" if allow_ignored else "≥ 0"
            fail(where, "bad_token_id", f"{field}[{i}]", f"expected an integer {allowed}, got {token}")
    return tuple(int(token) for token in ids)


ADAPTERS: Mapping[str, Callable[[Fields], Sample]] = {
    "messages": from_messages,
    "sharegpt": from_sharegpt,
    "alpaca": from_alpaca,
    "qa": from_qa,
    "prompt_completion": from_prompt_completion,
    "text": from_text,
    "tokens": from_tokens,
}
