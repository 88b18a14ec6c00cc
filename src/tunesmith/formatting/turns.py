"""Which characters of a rendered conversation an assistant turn trains on.

A turn trains on what the assistant generates: its content plus the end-of-turn marker the
template writes after it (so the model learns to stop). Where that is depends on the template:

- **content**: the content found verbatim in the render, then spaces and an end-of-turn marker;
  for a turn with tool calls, everything up to the first end-of-turn marker (the calls the template
  writes after the content are generated text too);
- **generation blocks**: a template with `{% generation %}` blocks marks the generated text itself;
  the block is used, less any leading text its own generation prompt already supplies (SmolLM3
  wraps "<|im_start|>assistant\\n" inside the block) and whitespace after the end-of-turn marker;
- **generation prompt**: for the final turn of a render whose content the template rewrote
  (DeepSeek-R1 drops reasoning up to `</think>`), whatever the render adds after the text
  `add_generation_prompt=True` gives for the turns before it, up to the end-of-turn marker. A turn
  with tool calls and no content is found the same way, where it is the final turn of its own
  render, and used in the full render when that holds the same text up to the turn's end.
"""

from __future__ import annotations

from dataclasses import dataclass

from tunesmith.errors import UserError
from tunesmith.formatting.template import ChatTemplate, Rendered, Span, end_of_turn_length


@dataclass(frozen=True)
class Turn:
    """Characters [start, end) that train for assistant message `message`."""

    message: int
    start: int
    end: int
    eot: bool
    """The range ends with an end-of-turn marker."""


def locate_turns(template: ChatTemplate, rendered: Rendered, messages: list[dict], indices: list[int],
                 markers: tuple[str, ...], *, tools: list[dict] | None) -> dict[int, Turn | None]:
    """The trained range of each assistant message in `indices`; None for one that cannot be found
    (the template dropped or rewrote it). The last message rendered may also be found through the
    generation prompt."""
    spans = {span.message: span for span in rendered.spans}
    return {index: _locate(template, rendered, messages, index, markers, tools, spans) for index in indices}


def _locate(template: ChatTemplate, rendered: Rendered, messages: list[dict], index: int, markers: tuple[str, ...],
            tools: list[dict] | None, spans: dict[int, Span]) -> Turn | None:
    span = spans.get(index)
    if rendered.blocks:
        block = _block_of(rendered, messages, index, span)
        if block is not None:
            return _from_block(template, rendered.text, messages, index, block, markers, tools)
    if span is not None:
        if messages[index].get("tool_calls"):
            return _from_tool_calls(rendered, span, markers)
        tail = end_of_turn_length(rendered.text, span.end, markers)
        return Turn(index, span.start, span.end + tail, tail > 0)
    if index == len(messages) - 1:
        return _from_generation_prompt(template, rendered.text, messages, index, markers, tools)
    if not messages[index]["content"]:  # tool calls only: nothing to find verbatim, so nothing rewritten
        return _from_own_render(template, rendered.text, messages, index, markers, tools)
    return None


def _from_tool_calls(rendered: Rendered, span: Span, markers: tuple[str, ...]) -> Turn:
    """Content, then the tool calls the template writes after it, up to the first end-of-turn
    marker before the next message's content."""
    text, start, end = rendered.text, span.start, span.end
    limit = min((s.start for s in rendered.spans if s.start >= end and s.message > span.message), default=len(text))
    found = next_marker(text, end, limit, markers)
    if found is None:
        tail = end_of_turn_length(text, end, markers)
        return Turn(span.message, start, end + tail, tail > 0)
    if start == end:  # no content: the tool calls start the generated text
        start += len(text[start:found]) - len(text[start:found].lstrip())
    return Turn(span.message, start, found, True)


def _block_of(rendered: Rendered, messages: list[dict], index: int, span: Span | None) -> tuple[int, int] | None:
    """The generation block of assistant message `index`: the n-th block for the n-th assistant
    message when the counts agree, else the block that holds its content."""
    assistants = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if len(assistants) == len(rendered.blocks):
        return rendered.blocks[assistants.index(index)]
    if span is not None:
        return next((b for b in rendered.blocks if b[0] <= span.start and span.end <= b[1]), None)
    return None


def _from_block(template: ChatTemplate, text: str, messages: list[dict], index: int, block: tuple[int, int],
                markers: tuple[str, ...], tools: list[dict] | None) -> Turn:
    start, end = block
    prompt = _generation_prompt(template, messages[:index], tools)
    if prompt is not None:
        start = max(start, min(common_prefix_length(prompt, text), end))
    stripped = text[start:end].rstrip()
    if any(stripped.endswith(marker) for marker in markers):
        return Turn(index, start, start + len(stripped), True)
    tail = end_of_turn_length(text, end, markers)  # the marker may follow the block
    return Turn(index, start, end + tail, tail > 0)


def _from_generation_prompt(template: ChatTemplate, text: str, messages: list[dict], index: int,
                            markers: tuple[str, ...], tools: list[dict] | None) -> Turn | None:
    prompt = _generation_prompt(template, messages[:index], tools)
    if prompt is None:
        return None
    start = common_prefix_length(prompt, text)
    found = next_marker(text, start, len(text), markers)
    if found is not None:
        return Turn(index, start, found, True)
    end = len(text.rstrip())
    return Turn(index, start, end, False) if end > start else None


def _from_own_render(template: ChatTemplate, text: str, messages: list[dict], index: int,
                     markers: tuple[str, ...], tools: list[dict] | None) -> Turn | None:
    """A turn without content (only tool calls), located where it is the final turn; valid in
    `text` only if the full render holds that same text up to the turn's end."""
    try:
        own = template.render(messages[: index + 1], tools=tools)
    except UserError:
        return None
    turn = _from_generation_prompt(template, own, messages, index, markers, tools)
    return turn if turn is not None and text[: turn.end] == own[: turn.end] else None


def _generation_prompt(template: ChatTemplate, messages: list[dict], tools: list[dict] | None) -> str | None:
    """The text before an assistant turn at inference; None where the template cannot render it."""
    if not messages:
        return None
    try:
        return template.render(messages, add_generation_prompt=True, tools=tools)
    except UserError:
        return None


def next_marker(text: str, start: int, limit: int, markers: tuple[str, ...]) -> int | None:
    """End of the first end-of-turn marker in text[start:limit], or None.

    >>> next_marker("a</s>b<eot>", 0, 11, ("<eot>", "</s>"))
    5
    """
    best: tuple[int, int] | None = None
    for marker in markers:
        found = text.find(marker, start, limit)
        if found != -1 and (best is None or found < best[0]):
            best = (found, found + len(marker))
    return None if best is None else best[1]


def common_prefix_length(a: str, b: str) -> int:
    """How many leading characters `a` and `b` share.

    >>> common_prefix_length("<s>user: hi<a>", "<s>user: hi<a>yo"), common_prefix_length("abc", "abd")
    (14, 2)
    """
    if b.startswith(a):
        return len(a)
    low, high = 0, min(len(a), len(b))
    while low < high:  # binary search on equal prefixes: comparisons run in C
        middle = (low + high + 1) // 2
        if a[:middle] == b[:middle]:
            low = middle
        else:
            high = middle - 1
    return low
