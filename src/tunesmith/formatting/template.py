"""Chat templates: the model's own Jinja, rendered in a sandbox, with a span for every message.

One render of the whole conversation gives the text that is tokenized and, for each message, the
character span of its content. Masks come from those spans, never from tokenizing pieces apart.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path

from tunesmith.errors import UserError

# Private-use characters: never produced by a template, vanishingly rare in data.
_OPEN, _CLOSE = "\ue000", "\ue001"
MAX_RENDER_CHARS = 4_000_000

# Strings that end an assistant turn in the templates people use. Only those that are special
# tokens of the model's tokenizer (plus its eos) are looked for after an assistant message.
KNOWN_END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "</s>", "<|endoftext|>",
                     "<|end_of_text|>", "<｜end▁of▁sentence｜>", "<|end_of_role|>")


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


class ChatTemplate:
    """A Jinja chat template compiled once in an immutable sandbox.

    >>> t = ChatTemplate("{% for m in messages %}<{{ m.role }}>{{ m.content }}</s>{% endfor %}", name="toy")
    >>> r = t.render_with_spans([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}])
    >>> r.text, [(s.start, s.end) for s in r.spans]
    ('<user>hi</s><assistant>yo</s>', [(6, 8), (23, 25)])
    """

    def __init__(self, source: str, *, name: str, special_tokens: dict[str, str] | None = None):
        self.source = source
        self.name = name
        self.special_tokens = dict(special_tokens or {})
        self._template = _compile(source, name)
        self._skeletons: dict[str, str] = {}

    def render(self, messages: list[dict], *, add_generation_prompt: bool = False) -> str:
        try:
            text = self._template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                         **self.special_tokens)
        except UserError:
            raise
        except Exception as err:  # a template error is about the template the user chose
            raise UserError(f"chat template {self.name}: {type(err).__name__}: {err}") from None
        if len(text) > MAX_RENDER_CHARS:
            raise UserError(f"chat template {self.name}: rendered more than {MAX_RENDER_CHARS} characters")
        return text

    def render_with_spans(self, messages: list[dict]) -> Rendered:
        """Render once and locate each message's content in the text.

        The "skeleton" (the same conversation with each content replaced by a marker) depends only
        on the messages' shape, so it is rendered once per shape; substituting the contents back
        must reproduce the real render exactly, or the spans are found by search instead.
        """
        text = self.render(messages)
        shape = json.dumps([{k: v for k, v in m.items() if k != "content"} for m in messages], sort_keys=True,
                           default=str)
        skeleton = self._skeletons.get(shape)
        if skeleton is None:
            marked = [dict(m, content=f"{_OPEN}{i}{_CLOSE}") for i, m in enumerate(messages)]
            skeleton = self.render(marked)
            if len(self._skeletons) < 4096:
                self._skeletons[shape] = skeleton
        spans = _spans_from_skeleton(skeleton, messages, text)
        if spans is None:  # the template rewrites content (e.g. drops reasoning): search instead
            spans = _spans_by_search(text, messages)
        return Rendered(text=text, spans=tuple(spans))


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


def _spans_by_search(text: str, messages: list[dict]) -> list[Span]:
    spans, cursor = [], 0
    for index, message in enumerate(messages):
        content = message["content"]
        found = text.find(content, cursor) if content else -1
        if found == -1:
            continue  # dropped or rewritten by the template: it has no span, so it cannot train
        spans.append(Span(index, found, found + len(content)))
        cursor = found + len(content)
    return spans


def end_of_turn_length(text: str, position: int, markers: tuple[str, ...]) -> int:
    """Length of whitespace plus an end-of-turn marker starting at `position`, or 0 if none.

    >>> end_of_turn_length("yo<|im_end|>\\n", 2, ("<|im_end|>",))
    10
    """
    rest = text[position:]
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


def _raise_exception(message: str) -> None:
    raise UserError(f"chat template refused the conversation: {message}")


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


@lru_cache(maxsize=32)
def _compile(source: str, name: str):
    import jinja2
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols],
                                        undefined=jinja2.Undefined)
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as err:
        raise UserError(f"chat template {name}:{err.lineno}: invalid Jinja: {err.message}") from None
