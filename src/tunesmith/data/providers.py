"""Rows in hosted fine-tuning providers' JSONL formats (`tunesmith data convert --to openai|together`),
checked against their documented rules, so an upload is not the first place a row is refused.

- **openai** (chat fine-tuning): `{"messages": [...], "tools"?}` with roles system, user, assistant and
  tool; `weight` 0 or 1, on assistant messages only; tool-call arguments as JSON text; at least one
  assistant message per row, at least 10 rows, at most 512 MB.
- **together** (conversational): the same message shape (tool calls on the models that take them),
  conversations that start with system or user and then alternate user and assistant (tool results
  after the assistant message that called them); `weight` 0 or 1 on any message; raw text as
  `{"text"}`; at most 100 GB.

What a format cannot carry is refused for that row, naming the row and the field, never dropped:
reasoning (neither has a field for it; training without it would teach answers without their
thinking), pre-tokenized rows (Together takes those as Parquet), raw text for OpenAI. Tool calls
without ids get ids (`call_<n>`) and tool results without `tool_call_id` take the id of the call they
answer, in order, so each result stays paired with its call.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tunesmith.data.preference import KtoSample, PreferenceSample
from tunesmith.data.types import Conversation, Issue, Message, Provenance, Sample, TextSample

PROVIDERS = ("openai", "together")


@dataclass(frozen=True)
class Limits:
    min_rows: int
    max_bytes: int
    text_rows: bool
    alternate: bool
    """Turns must start with system/user and alternate user/assistant (tool results aside)."""
    weight_roles: tuple[str, ...]


LIMITS = {
    "openai": Limits(min_rows=10, max_bytes=512 * 2**20, text_rows=False, alternate=False, weight_roles=("assistant",)),
    "together": Limits(
        min_rows=1,
        max_bytes=100 * 2**30,
        text_rows=True,
        alternate=True,
        weight_roles=("system", "user", "assistant", "tool"),
    ),
}


class NotCarried(Exception):
    """A row the provider's format cannot carry: `field` and `message` name why."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field, self.message = field, message

    def issue(self, provider: str, where: Provenance) -> Issue:
        return Issue(f"{provider}_format", "error", where, self.field, self.message)


def provider_row(sample: Sample, provider: str) -> dict[str, Any]:
    """`sample` as one row of `provider`'s JSONL; NotCarried when the format cannot hold it faithfully."""
    limits = LIMITS[provider]
    if isinstance(sample, TextSample):
        if not limits.text_rows:
            raise NotCarried("text", f"{provider} fine-tuning takes conversations only, not raw text")
        return {"text": sample.text}
    if not isinstance(sample, Conversation):
        raise NotCarried(
            "input_ids",
            f"pre-tokenized rows cannot be written as {provider} JSONL (Together takes them as Parquet)",
        )
    messages = list(sample.messages)
    if not any(m.role == "assistant" for m in messages):
        raise NotCarried("messages", f"no assistant message: {provider} would have nothing to train on")
    if limits.alternate:
        _check_alternation(messages)
    out = []
    pending: list[str] = []  # ids of the calls the next tool results answer, in order
    calls = 0
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if message.reasoning is not None:
            raise NotCarried(
                f"{where}.reasoning",
                f"{provider}'s format has no field for reasoning; remove it from the data "
                "(training without it would teach the answers without their thinking)",
            )
        row: dict[str, Any] = {"role": message.role, "content": message.content}
        if message.weight is not None:
            if message.role not in limits.weight_roles or message.weight not in (0, 1):
                raise NotCarried(
                    f"{where}.weight",
                    f"{provider} takes weight 0 or 1 on {', '.join(limits.weight_roles)} messages, "
                    f"not {message.weight!r} on a {message.role} message",
                )
            row["weight"] = int(message.weight)
        if message.tool_calls:
            pending = []
            row["tool_calls"] = []
            for call in message.tool_calls:
                calls += 1
                call_id = call.id or f"call_{calls}"
                pending.append(call_id)
                arguments = call.arguments if isinstance(call.arguments, str) else json.dumps(call.arguments)
                row["tool_calls"].append(
                    {"id": call_id, "type": "function", "function": {"name": call.name, "arguments": arguments}}
                )
        if message.role == "tool":
            row["tool_call_id"] = _answered_call(message, pending, where)
        if message.name is not None and message.role != "tool":
            row["name"] = message.name
        out.append(row)
    result: dict[str, Any] = {"messages": out}
    if sample.tools:
        result["tools"] = list(sample.tools)
    return result


def _answered_call(message: Message, pending: list[str], where: str) -> str:
    if message.tool_call_id is not None:
        if message.tool_call_id in pending:
            pending.remove(message.tool_call_id)
        return message.tool_call_id
    if not pending:
        raise NotCarried(f"{where}.tool_call_id", "a tool result that answers no tool call before it")
    return pending.pop(0)


def _check_alternation(messages: list[Message]) -> None:
    """Together's rule; an assistant message answering tool results continues the assistant's turn."""
    turns: list[tuple[int, str]] = []
    after_tool = False
    for index, message in enumerate(messages):
        if message.role == "tool":
            after_tool = True
            continue
        if not (message.role == "assistant" and after_tool):
            turns.append((index, message.role))
        after_tool = False
    if turns and turns[0][1] == "system":
        turns = turns[1:]
    for position, (index, role) in enumerate(turns):
        expected = "user" if position % 2 == 0 else "assistant"
        if role != expected:
            raise NotCarried(
                f"messages[{index}].role",
                f"together needs turns that start with system or user and then alternate user and assistant; "
                f"found {role} where {expected} belongs",
            )


def file_issues(provider: str, rows: int, size: int, where: str) -> list[Issue]:
    """The provider's limits on a whole file (line 0 names the file itself)."""
    limits = LIMITS[provider]
    problems = []
    if rows < limits.min_rows:
        problems.append(f"{rows} rows: {provider} needs at least {limits.min_rows}")
    if size > limits.max_bytes:
        problems.append(
            f"{size / 2**20:,.0f} MiB: {provider} takes files of at most {limits.max_bytes / 2**20:,.0f} MiB; "
            "split it (tunesmith data split) or upload fewer rows"
        )
    return [Issue(f"{provider}_format", "error", Provenance(where, 0), "", problem) for problem in problems]


def provider_preference_row(sample: PreferenceSample, provider: str) -> dict[str, Any]:
    """A preference pair as one row of `provider`'s DPO JSONL (OpenAI's format, which Together takes
    too): `input.messages` (+ `tools`), `preferred_output` and `non_preferred_output`, each one
    assistant message. The prompt is checked by the same rules as a chat row of that provider."""
    if isinstance(sample, KtoSample):
        raise NotCarried(
            "label",
            f"{provider} has no format for unpaired rows (KTO); pair each answer with another for the same "
            "prompt, or train KTO here (train.objective: kto)",
        )
    outputs = {}
    for name, key, answer in (
        ("chosen", "preferred_output", sample.chosen),
        ("rejected", "non_preferred_output", sample.rejected),
    ):
        single = answer[0]
        if len(answer) != 1 or single.tool_calls or single.reasoning is not None:
            raise NotCarried(
                name,
                f"{provider}'s preference format takes one assistant message per answer, without tool calls "
                "or reasoning",
            )
        outputs[key] = [{"role": "assistant", "content": single.content}]
    whole = Conversation(sample.prompt + sample.chosen, sample.source, tools=sample.tools)
    try:
        checked = provider_row(whole, provider)
    except NotCarried as refused:
        raise NotCarried(refused.field.replace("messages", "prompt", 1), refused.message) from None
    prompt = [{k: v for k, v in m.items() if k != "weight"} for m in checked["messages"][: len(sample.prompt)]]
    given: dict[str, Any] = {"messages": prompt}
    if "tools" in checked:
        given["tools"] = checked["tools"]
    return {"input": given, **outputs}
