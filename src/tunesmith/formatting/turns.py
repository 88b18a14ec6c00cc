"""What an assistant turn trains on: exactly what the model generates for it at inference.

One rule for every template. At inference the model is given `render(messages[:i],
add_generation_prompt=True)` (the generation prompt) and generates the rest of
`render(messages[:i+1])` until it emits a stop token. So turn `i` trains on that continuation,
through the first stop token in it (see `formatting/probe.py` for which strings stop), and on
nothing else: text the template writes after the stop (ChatML's newline) belongs to the next prompt.

Where a template writes no stop at the end of a turn but the next turn starts with one (formats
whose turn ends where the next role token starts), that token is the stop and is appended to a
final turn. Where the generation prompt is not the start of the rendered turn (a template that
forces a think block at inference that it does not write in its own render), no training text
matches inference and the row is refused; so are rows whose tools, tool calls, tool results,
reasoning or answer the template leaves out: training would teach something other than the data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tunesmith.errors import UserError

NEXT_USER = {"role": "user", "content": "next"}


@dataclass(frozen=True)
class Turn:
    """Assistant message `message` as generated at inference: `text[start:end]` follows the prompt
    `text[:start]` and ends with a stop token. `text` is the turn's own render."""

    message: int
    start: int
    end: int
    text: str
    stop: str = ""
    """The stop token the generated text ends with."""

    @property
    def prompt(self) -> str:
        return self.text[: self.start]

    @property
    def generated(self) -> str:
        return self.text[self.start : self.end]


def refuse(template: Any, what: str, way_out: str) -> UserError:
    return UserError(f"chat template {template.name} {what}; {way_out}")


def inference_turn(
    template: Any,
    messages: list[dict],
    index: int,
    tools: list[dict] | None,
    stops: tuple[str, ...],
    *,
    full: str | None = None,
) -> Turn:
    """Turn `index` as the model generates it; `full` is the render of `messages` when `index` is
    the last message (saves a render). Refuses (UserError) what cannot be trained faithfully."""
    prompt = template.render(messages[:index], add_generation_prompt=True, tools=tools)
    own = (
        full if full is not None and index == len(messages) - 1 else template.render(messages[: index + 1], tools=tools)
    )
    if not own.startswith(prompt):
        at = _common_prefix(prompt, own)
        raise refuse(
            template,
            f"renders assistant messages[{index}] as {own[at : at + 40]!r} where its generation "
            f"prompt (what the model is given at inference) has {prompt[at : at + 40]!r}, so no training "
            "text matches inference",
            "set the template's variables in template.variables (e.g. enable_thinking: false), give the "
            "reasoning the template expects, or choose another template.chat_template",
        )
    end = first_stop(own, len(prompt), stops)
    if end is None:
        own, end = _stop_from_next_turn(template, messages, index, tools, stops, own)
    if end is None:
        check_generated(template, messages[index], Turn(index, len(prompt), len(own), own))
        raise refuse(
            template,
            f"writes no stop token after assistant messages[{index}] (looked for "
            f"{', '.join(stops) or 'an eos token'}), so the model would never learn to stop",
            "use a template whose turns end with the tokenizer's eos or end-of-turn token",
        )
    turn = Turn(index, len(prompt), end, own, next((s for s in stops if own.endswith(s, 0, end)), ""))
    check_generated(template, messages[index], turn)
    _check_generation_blocks(template, messages[: index + 1], tools, turn)
    return turn


def _check_generation_blocks(template: Any, messages: list[dict], tools: list[dict] | None, turn: Turn) -> None:
    """A template's own `{% generation %}` blocks are a check, not a source of truth: the turn's
    generated text must lie in the last block of its render (the final turn's)."""
    if not template.has_generation_blocks:
        return
    blocks = template.generation_blocks(messages, tools=tools)
    body = turn.text[turn.start : turn.end - len(turn.stop)].strip()
    if blocks and body:
        start, end = blocks[-1]
        if body not in turn.text[start:end]:
            raise refuse(
                template,
                f"marks {turn.text[start:end][:40]!r} as generated with {{% generation %}} where "
                f"the model generates {body[:40]!r} for assistant messages[{turn.message}]",
                "fix the template's generation blocks or remove them",
            )


def _stop_from_next_turn(
    template: Any, messages: list[dict], index: int, tools: list[dict] | None, stops: tuple[str, ...], own: str
) -> tuple[str, int | None]:
    """A stop that is the start of the next turn (`<|user|>` in GLM-style formats): in the render
    with one more user message, the text right after this turn starts with a stop token."""
    try:
        longer = template.render([*messages[: index + 1], NEXT_USER], tools=tools)
    except UserError:
        return own, None
    if not longer.startswith(own):
        return own, None
    after = longer[len(own) :]
    stop = next((s for s in stops if after.startswith(s)), None)
    return (own + stop, len(own) + len(stop)) if stop else (own, None)


def first_stop(text: str, start: int, stops: tuple[str, ...]) -> int | None:
    """End of the first stop string in text[start:], or None.

    >>> first_stop("a</s>b<eot>", 0, ("<eot>", "</s>"))
    5
    """
    best: tuple[int, int] | None = None
    for stop in stops:
        found = text.find(stop, start)
        if found != -1 and (best is None or found < best[0]):
            best = (found, found + len(stop))
    return None if best is None else best[1]


def check_generated(template: Any, message: dict, turn: Turn) -> None:
    """The turn's answer, reasoning and tool calls must be in what it generates."""
    generated, index = turn.generated, turn.message
    reasoning = message.get("reasoning_content")
    if isinstance(reasoning, str) and reasoning.strip() and reasoning.strip() not in generated:
        raise refuse(
            template,
            f"does not render the reasoning of assistant messages[{index}] (its "
            "reasoning_content/thinking field), so it would not train",
            "set template.drop: [reasoning] to train the answers without it, or choose a template "
            "that renders reasoning",
        )
    content = message.get("content") or ""
    if isinstance(content, str) and content.strip() and content.strip() not in generated:
        if "</think>" in content and content.split("</think>")[-1].strip() in generated:
            raise refuse(
                template,
                f"drops the <think> reasoning of assistant messages[{index}] from what the "
                "model generates, so it would not train",
                "set template.drop: [reasoning] to train the answers without it, or choose a template "
                "that keeps reasoning in the final turn",
            )
        what = "the text before the tool call" if message.get("tool_calls") else "the answer"
        raise refuse(
            template,
            f"leaves out or rewrites {what} of assistant messages[{index}]",
            tool_way_out(template) if message.get("tool_calls") else "choose another template",
        )
    for number, call in enumerate(message.get("tool_calls") or ()):
        function = call.get("function", call)
        values = [str(function.get("name", "")), *_leaves(function.get("arguments"))]
        missing = [v for v in values if not _written(v, generated)]
        if missing:
            raise refuse(
                template,
                f"does not render tool call {number} of assistant messages[{index}] "
                f"(missing {missing[0]!r}), so the call would not train",
                tool_way_out(template),
            )


def check_rendered(template: Any, messages: list[dict], tools: list[dict] | None, text: str) -> None:
    """Tools, tool calls and tool results of the whole conversation must be in its render."""
    for tool in tools or ():
        name = (tool.get("function") or tool).get("name") if isinstance(tool, dict) else None
        if isinstance(name, str) and name not in text:
            raise refuse(
                template,
                f"does not render the row's tools (tool {name!r} is not in the text), so the "
                "model would never see them",
                tool_way_out(template, drop=True),
            )
    for index, message in enumerate(messages):
        for number, call in enumerate(message.get("tool_calls") or ()):
            name = call.get("function", call).get("name", "")
            if name and name not in text:
                raise refuse(
                    template,
                    f"does not render tool call {number} of messages[{index}] ({name!r})",
                    tool_way_out(template),
                )
        content = message.get("content")
        if (
            message["role"] == "tool"
            and isinstance(content, str)
            and content.strip()
            and not _written(content.strip(), text)
        ):
            raise refuse(template, f"does not render the tool result messages[{index}]", tool_way_out(template))


def tool_way_out(template: Any, *, drop: bool = False) -> str:
    hint = template.probes.get("tool_hint") or "choose a template that renders tool calls and results"
    return (
        f"{hint}, or, for rows without tool calls, set template.drop: [tools] to leave the schemas out"
        if drop
        else hint
    )


def _leaves(value: Any) -> list[Any]:
    """Scalar values of tool-call arguments (an object, or its JSON text)."""
    if isinstance(value, str):
        import json

        try:
            value = json.loads(value)
        except ValueError:
            return [value] if value.strip() else []
    if isinstance(value, dict):
        return [leaf for item in value.values() for leaf in _leaves(item)]
    if isinstance(value, list):
        return [leaf for item in value for leaf in _leaves(item)]
    if isinstance(value, bool) or value is None:
        return []
    return [value]


def _written(value: Any, text: str) -> bool:
    """Whether a value is in the text as written, or JSON-escaped."""
    import json

    plain = str(value)
    return plain in text or any(json.dumps(plain, ensure_ascii=a)[1:-1] in text for a in (False, True))


def _common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
