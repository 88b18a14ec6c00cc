"""Chat templates: the model's own Jinja, rendered in a sandbox, with a span for every message.

One render of the whole conversation gives the text that is tokenized and, for each message, the
character span of its content; templates with `{% generation %}` blocks also give each block's
span. Masks come from those spans, never from tokenizing pieces apart.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunesmith.errors import UserError
from tunesmith.formatting.sandbox import (
    GEN_CLOSE,
    GEN_OPEN,
    RenderLimit,
    TemplateRefusal,
    compile_template,
    render_capped,
    split_generation,
)

if TYPE_CHECKING:
    from tunesmith.runfolder import RunRecord

# Private-use characters: never produced by a template, vanishingly rare in data.
_OPEN, _CLOSE = "\ue000", "\ue001"
_ANCHOR = 16  # characters of template text before a content that a search must also find
_GENERATION_TAG = re.compile(r"{%-?\s*generation\s*-?%}")


@dataclass(frozen=True)
class Span:
    """Characters [start, end) of one message's content in the rendered text."""

    message: int
    start: int
    end: int


@dataclass(frozen=True)
class Rendered:
    text: str
    spans: tuple[Span, ...]
    """Content spans of the messages found verbatim in `text` (a rewritten message has none)."""
    blocks: tuple[tuple[int, int], ...] = ()
    """[start, end) of each `{% generation %}` block, in order (empty for templates without them)."""


class ChatTemplate:
    """A Jinja chat template compiled once in an immutable sandbox.

    >>> t = ChatTemplate("{% for m in messages %}<{{ m.role }}>{{ m.content }}</s>{% endfor %}", name="toy")
    >>> r = t.render_with_spans([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}])
    >>> r.text, [(s.start, s.end) for s in r.spans]
    ('<user>hi</s><assistant>yo</s>', [(6, 8), (23, 25)])
    """

    def __init__(
        self,
        source: str,
        *,
        name: str,
        special_tokens: dict[str, Any] | None = None,
        drop: tuple[str, ...] | frozenset[str] = (),
    ):
        self.source = source
        self.name = name
        self.special_tokens = dict(special_tokens or {})
        """Variables every render gets: bos_token, eos_token, and `template.variables` (enable_thinking...)."""
        self.drop = frozenset(drop)
        """Message fields left out before rendering (`template.drop`: reasoning, tools)."""
        self.probes: dict[str, Any] = {}
        """What `formatting/probe.py` found out about this template, once."""
        self.has_generation_blocks = bool(_GENERATION_TAG.search(source))
        self._template = compile_template(source, name)
        self._skeletons: dict[str, str] = {}

    @classmethod
    def from_record(cls, record: RunRecord) -> ChatTemplate:
        """The training template as a run (or a merged model) recorded it: source, variables, dropped
        fields, and the end-of-turn markers it trained as its stops."""
        template = cls(
            record.chat_template, name=record.template_name, special_tokens=record.special_tokens, drop=record.drop
        )
        template.probes["stops"] = tuple(record.end_of_turn)
        return template

    def render(
        self, messages: list[dict], *, add_generation_prompt: bool = False, tools: list[dict] | None = None
    ) -> str:
        """The text the model sees, generation markers removed."""
        text = self._render_marked(messages, add_generation_prompt, tools)
        if self.has_generation_blocks:
            text = text.replace(GEN_OPEN, "").replace(GEN_CLOSE, "")
        return text

    def generation_blocks(
        self, messages: list[dict], *, tools: list[dict] | None = None
    ) -> tuple[tuple[int, int], ...]:
        """[start, end) of each `{% generation %}` block in the render of `messages` (none without such blocks)."""
        if not self.has_generation_blocks:
            return ()
        return split_generation(self._render_marked(messages, False, tools))[1]

    def render_with_spans(self, messages: list[dict], *, tools: list[dict] | None = None) -> Rendered:
        """Render once and locate each message's content (and each generation block) in the text.

        The "skeleton" (the same conversation with each content replaced by a marker) depends only
        on the messages' shape, so it is rendered once per shape; substituting the contents back
        must reproduce the real render exactly, or the spans are found by search instead.
        """
        text = self._render_marked(messages, False, tools)
        blocks: tuple[tuple[int, int], ...] = ()
        if self.has_generation_blocks:
            text, blocks = split_generation(text)
        shape = json.dumps(
            [[{k: v for k, v in m.items() if k != "content"} for m in messages], tools], sort_keys=True, default=str
        )
        skeleton = self._skeletons.get(shape)
        if skeleton is None:
            marked = [dict(m, content=f"{_OPEN}{i}{_CLOSE}") for i, m in enumerate(messages)]
            skeleton = self.render(marked, tools=tools)
            if len(self._skeletons) < 4096:
                self._skeletons[shape] = skeleton
        spans = _spans_from_skeleton(skeleton, messages, text)
        if spans is None:  # the template rewrites some content (trims it, drops reasoning): search
            spans = _spans_by_search(text, messages, skeleton)
        return Rendered(text=text, spans=tuple(spans), blocks=blocks)

    def _render_marked(self, messages: list[dict], add_generation_prompt: bool, tools: list[dict] | None) -> str:
        variables = dict(
            self.special_tokens, messages=messages, add_generation_prompt=add_generation_prompt, tools=tools
        )
        try:
            return render_capped(self._template, variables)
        except UserError:
            raise
        except TemplateRefusal as err:
            reason = " ".join(str(err).split())  # one line, whatever the template wrote
            raise UserError(f"chat template {self.name} refused the conversation: {reason}") from None
        except RenderLimit as err:
            raise UserError(f"chat template {self.name}: {err}") from None
        except Exception as err:  # a template error is about the template the user chose
            raise UserError(f"chat template {self.name}: {type(err).__name__}: {err}") from None


def _spans_from_skeleton(skeleton: str, messages: list[dict], text: str) -> list[Span] | None:
    """Substitute contents back into the marked render; valid only if it reproduces `text`."""
    out: list[str] = []
    spans: list[Span] = []
    cursor = length = 0
    while (start := skeleton.find(_OPEN, cursor)) != -1:
        end = skeleton.find(_CLOSE, start)
        if end == -1:
            return None
        marker = skeleton[start + 1 : end]
        if not marker.isdigit() or int(marker) >= len(messages):
            return None  # the marker text came from somewhere else (a name, arguments): search instead
        index = int(marker)
        literal = skeleton[cursor:start]
        out.append(literal)
        length += len(literal)
        content = messages[index]["content"]
        spans.append(Span(index, length, length + len(content)))
        out.append(content)
        length += len(content)
        cursor = end + 1
    out.append(skeleton[cursor:])
    return spans if "".join(out) == text else None


def _spans_by_search(text: str, messages: list[dict], skeleton: str) -> list[Span]:
    """Each content found in order, right after the template text the skeleton puts before it
    (its last `_ANCHOR` characters), so a short answer is not "found" inside a role name or an
    earlier message. A content the template dropped or rewrote gets no span.

    >>> [(s.message, s.start) for s in _spans_by_search("<u>hi</s><a>hi</s>", [{"content": "hi"}] * 2,
    ...                                                  "<u>\ue0000\ue001</s><a>\ue0001\ue001</s>")]
    [(0, 3), (1, 12)]
    """
    spans, cursor, seen = [], 0, set()
    for literal, index in _skeleton_pieces(skeleton, len(messages)):
        content = messages[index]["content"]
        if index in seen or not isinstance(content, str) or not content:
            continue
        seen.add(index)
        anchor = literal[-_ANCHOR:]
        found = text.find(anchor + content, cursor)
        if found == -1:
            continue
        start = found + len(anchor)
        spans.append(Span(index, start, start + len(content)))
        cursor = start + len(content)
    return spans


def _skeleton_pieces(skeleton: str, count: int) -> list[tuple[str, int]]:
    """(template text before the marker, message index) for each content marker in a skeleton."""
    pieces, cursor = [], 0
    while (start := skeleton.find(_OPEN, cursor)) != -1:
        end = skeleton.find(_CLOSE, start)
        marker = skeleton[start + 1 : end] if end != -1 else ""
        if not marker.isdigit() or int(marker) >= count:
            break
        pieces.append((skeleton[cursor:start], int(marker)))
        cursor = end + 1
    return pieces


def end_of_turn_length(text: str, position: int, markers: tuple[str, ...]) -> int:
    """Length of spaces plus an end-of-turn marker starting at `position`, or 0 if none.

    >>> end_of_turn_length("yo<|im_end|>\\n", 2, ("<|im_end|>",))
    10
    """
    rest = text[position : position + 64]
    stripped = rest.lstrip(" ")
    for marker in markers:
        if stripped.startswith(marker):
            return len(rest) - len(stripped) + len(marker)
    return 0


def template_from_file(path: str | Path) -> str:
    file = Path(path)
    if not file.is_file():
        raise UserError(f"chat template file not found: {path}")
    return file.read_text(encoding="utf-8")
