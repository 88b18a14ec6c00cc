"""Semantic rules on one normalized sample (the content keys that find duplicates: data/keys.py).

A format adapter decides whether a row *can* be read as a sample; these rules decide whether the
sample makes sense to train on (an assistant turn to learn from, tool results that answer a call,
weights only where they mean something). Every finding is an `Issue` with a stable `code`, the
field it is about (`messages[2].role`) and a hint, so a person can fix the row without a debugger.
"""

from __future__ import annotations

import json
import re

from tunesmith.data.types import IGNORE_INDEX, Conversation, Issue, Message, Sample, TextSample, TokenSample

# JSON may spell half a UTF-16 pair ("\\ud800"); Python keeps it, but no tokenizer can encode it.
_SURROGATE = re.compile("[\ud800-\udfff]")
# A template variable a data generator left in, e.g. "Dear {{name}},".
_PLACEHOLDER = re.compile(r"\{\{\s*[A-Za-z_][A-Za-z0-9_.]*\s*\}\}")
_IMAGE_PLACEHOLDER = "<image>"  # LLaMA-Factory's multimodal rows mark each image so


def check_sample(sample: Sample) -> list[Issue]:
    """Every rule that applies to `sample`; an empty list means it is fine to train on."""
    if isinstance(sample, Conversation):
        return _check_surrogates(sample) or _check_conversation(sample)
    if isinstance(sample, TextSample):
        if _SURROGATE.search(sample.text):
            return [_surrogate_issue(sample, "text")]
        if len(sample.text) > MAX_ROW_CHARS:
            return [
                _issue(
                    sample,
                    "too_long",
                    "error",
                    "text",
                    f"the text is {len(sample.text):,} characters, far more than any max_length holds",
                    "split it into documents of a few thousand characters",
                )
            ]
        if not sample.text.strip():
            return [_issue(sample, "empty_text", "error", "text", "the text is empty", "remove the row")]
        return []
    return _check_tokens(sample)


def _issue(sample: Sample, code: str, severity: str, field: str, message: str, hint: str = "") -> Issue:
    return Issue(code, severity, sample.source, field, message, hint)  # type: ignore[arg-type]


def _surrogate_issue(sample: Sample, field: str) -> Issue:
    return _issue(
        sample,
        "lone_surrogate",
        "error",
        field,
        "the text holds half of a UTF-16 surrogate pair "
        "(a \\ud800-\\udfff escape on its own), which no tokenizer can encode",
        "the file was probably cut or converted badly; fix or remove the character",
    )


def _check_surrogates(conv: Conversation) -> list[Issue]:
    """Lone surrogates in anything a template may render: content, names, tool calls."""
    for index, m in enumerate(conv.messages):
        for key, value in (
            ("content", m.content),
            ("reasoning", m.reasoning or ""),
            ("name", m.name or ""),
            ("tool_call_id", m.tool_call_id or ""),
        ):
            if not value.isascii() and _SURROGATE.search(value):  # isascii is O(1): most text skips the search
                return [_surrogate_issue(conv, f"messages[{index}].{key}")]
        for number, call in enumerate(m.tool_calls):
            if _SURROGATE.search(call.name + call.arguments_text + (call.id or "")):
                return [_surrogate_issue(conv, f"messages[{index}].tool_calls[{number}]")]
    if conv.tools and _SURROGATE.search(json.dumps(list(conv.tools), ensure_ascii=False, default=repr)):
        return [_surrogate_issue(conv, "tools")]
    return []


MAX_ROW_CHARS = 1_000_000
"""Characters of text past which a row fits no max_length (a token covers a few characters): refused
without a tokenizer, before any render."""


def _check_conversation(conv: Conversation) -> list[Issue]:
    if not conv.messages:
        return [_issue(conv, "empty_conversation", "error", "messages", "the conversation has no messages")]
    size = sum(len(m.content) + len(m.reasoning or "") for m in conv.messages)
    if size > MAX_ROW_CHARS:
        return [
            _issue(
                conv,
                "too_long",
                "error",
                "messages",
                f"the row is {size:,} characters, far more than any max_length holds",
                "shorten or split it, or set data.on_bad_row: skip to leave such rows out",
            )
        ]
    issues: list[Issue] = []
    for index, message in enumerate(conv.messages):
        issues += _check_message(conv, index, message)
    issues += _check_order(conv)
    issues += _check_trains_something(conv)
    return issues


def _check_message(conv: Conversation, index: int, message: Message) -> list[Issue]:
    """Rules about one message on its own: empty content, weights or reasoning outside assistant
    turns, image placeholders, template variables left in an answer."""
    issues = []
    field = f"messages[{index}]"
    if _IMAGE_PLACEHOLDER in message.content:
        issues.append(
            _issue(
                conv,
                "vision_row",
                "error",
                f"{field}.content",
                f"an {_IMAGE_PLACEHOLDER} placeholder: image content is not supported yet",
                "vision models are not supported; remove the images or the rows",
            )
        )
    if message.role == "assistant" and "{{" in message.content and (found := _PLACEHOLDER.search(message.content)):
        issues.append(
            _issue(
                conv,
                "template_placeholder",
                "warning",
                f"{field}.content",
                f"unreplaced placeholder {found.group()} in the answer",
                "the model would learn to write it; fill it in or remove the row",
            )
        )
    if message.reasoning is not None and message.role != "assistant":
        issues.append(
            _issue(
                conv,
                "reasoning_not_assistant",
                "error",
                f"{field}.reasoning",
                f"reasoning on a {message.role} message",
                "only assistant messages have reasoning",
            )
        )
    if not message.content.strip() and not message.tool_calls:
        if message.role == "assistant":
            issues.append(
                _issue(
                    conv,
                    "empty_content",
                    "error",
                    f"{field}.content",
                    "assistant message is empty",
                    "the model would learn to answer with nothing",
                )
            )
        else:
            issues.append(
                _issue(conv, "empty_content", "warning", f"{field}.content", f"{message.role} message is empty")
            )
    if message.weight is not None and message.role != "assistant":
        issues.append(
            _issue(
                conv,
                "weight_not_assistant",
                "error",
                f"{field}.weight",
                f"a weight on a {message.role} message has no effect",
                "only assistant messages take a weight (0 or 1)",
            )
        )
    return issues


def _check_order(conv: Conversation) -> list[Issue]:
    """Rules about the sequence: system first, tool results after a call, no repeated roles."""
    issues = []
    previous: Message | None = None
    caller: Message | None = None  # the assistant message whose tool calls the next tool messages answer
    for index, message in enumerate(conv.messages):
        field = f"messages[{index}]"
        if message.role == "system" and index > 0:
            issues.append(
                _issue(
                    conv,
                    "system_not_first",
                    "error",
                    f"{field}.role",
                    "system message is not the first message",
                    "move it to the start",
                )
            )
        if message.role == "tool":
            issues += _check_tool_message(conv, field, message, caller)
        elif message.role == "assistant" and message.tool_calls:
            caller = message
        else:
            caller = None
        # Parallel tool results are several tool messages in a row, and that is how they should look.
        if previous is not None and previous.role == message.role and message.role != "tool":
            issues.append(
                _issue(
                    conv,
                    "consecutive_roles",
                    "warning",
                    f"{field}.role",
                    f"two {message.role} messages in a row (messages {index - 1} and {index})",
                    "merge them; some chat templates refuse this",
                )
            )
        previous = message
    return issues


def _check_tool_message(conv: Conversation, field: str, message: Message, caller: Message | None) -> list[Issue]:
    if caller is None:
        return [
            _issue(
                conv,
                "orphan_tool_message",
                "error",
                f"{field}.role",
                "tool message does not follow an assistant message with tool_calls",
                "a tool result must answer a call the assistant made",
            )
        ]
    ids = {call.id for call in caller.tool_calls if call.id is not None}
    if message.tool_call_id is not None and ids and message.tool_call_id not in ids:
        return [
            _issue(
                conv,
                "unknown_tool_call_id",
                "error",
                f"{field}.tool_call_id",
                f"tool_call_id {message.tool_call_id!r} answers no call of the assistant message before it",
                f"known ids: {', '.join(sorted(ids))}",
            )
        ]
    return []


def _check_trains_something(conv: Conversation) -> list[Issue]:
    assistants = [m for m in conv.messages if m.role == "assistant"]
    if not assistants:
        return [
            _issue(
                conv,
                "no_assistant",
                "error",
                "messages",
                "no assistant message, so nothing would train",
                "every conversation needs at least one assistant reply",
            )
        ]
    if all(m.weight == 0 for m in assistants):
        return [
            _issue(
                conv,
                "all_weights_zero",
                "error",
                "messages",
                "every assistant message has weight 0, so nothing would train",
                "set weight 1 (or remove the weight) on the turns to learn",
            )
        ]
    return []


def _check_tokens(sample: TokenSample) -> list[Issue]:
    if not sample.input_ids:
        return [_issue(sample, "empty_input_ids", "error", "input_ids", "input_ids is empty", "remove the row")]
    if sample.labels is None:
        return []
    if len(sample.labels) != len(sample.input_ids):
        return [
            _issue(
                sample,
                "bad_labels",
                "error",
                "labels",
                f"{len(sample.labels)} labels for {len(sample.input_ids)} input_ids",
                "labels must be as long as input_ids",
            )
        ]
    if all(label == IGNORE_INDEX for label in sample.labels[1:]):
        return [
            _issue(
                sample,
                "no_trainable_tokens",
                "error",
                "labels",
                f"every label is {IGNORE_INDEX}, so nothing would train",
                "the first position never trains; mark the tokens to learn with their ids",
            )
        ]
    return []
