"""The Jinja sandbox chat templates run in: immutable, capped in output and wall time.

A chat template is code from a model folder or a user's file. It runs in jinja2's
`ImmutableSandboxedEnvironment` (no attribute escapes, no mutation of the data), and rendering is
streamed through `Template.generate` so a runaway template is stopped as soon as its output passes
`MAX_RENDER_CHARS` or its time passes `RENDER_SECONDS`. Loops that produce no output (a `set`
accumulating in a namespace) are stopped by SIGALRM when rendering on the main thread.

`{% generation %}...{% endgeneration %}` (Hugging Face's convention for marking what the assistant
generates) is supported: the block's text is wrapped in two private-use characters that
`split_generation` removes again, giving the blocks' character ranges.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime
from functools import lru_cache
from typing import Any

from tunesmith.errors import UserError

try:  # the C module: `signal`'s wrappers convert to enums, ~10 µs a render that adds up over 100k rows
    import _signal
except ImportError:  # pragma: no cover - not CPython
    import signal as _signal  # type: ignore[no-redef]

MAX_RENDER_CHARS = 4_000_000
"""About a million tokens: far beyond any training row, far below what would exhaust memory."""
RENDER_SECONDS = 2.0
"""A real template renders a conversation in well under a millisecond; 2 s means it runs away."""

GEN_OPEN, GEN_CLOSE = "\ue002", "\ue003"  # private-use: never produced by a template
_MAX_POWER = 4096


class RenderLimit(Exception):
    """A render passed a cap; the template's owner turns it into a `UserError` naming the template."""


class TemplateRefusal(Exception):
    """The template called `raise_exception(message)`: it refuses this conversation."""


def split_generation(text: str) -> tuple[str, tuple[tuple[int, int], ...]]:
    """Remove generation markers; return the clean text and each block's [start, end) in it.

    >>> split_generation("a\\ue002bc\\ue003d")
    ('abcd', ((1, 3),))
    """
    if GEN_OPEN not in text:
        return text, ()
    out: list[str] = []
    blocks: list[tuple[int, int]] = []
    length = cursor = 0
    while (start := text.find(GEN_OPEN, cursor)) != -1:
        end = text.find(GEN_CLOSE, start)
        if end == -1:
            break
        before, inside = text[cursor:start], text[start + 1 : end]
        out += [before, inside]
        length += len(before)
        blocks.append((length, length + len(inside)))
        length += len(inside)
        cursor = end + 1
    out.append(text[cursor:])
    return "".join(out).replace(GEN_OPEN, "").replace(GEN_CLOSE, ""), tuple(blocks)


def render_capped(
    template: Any, variables: dict[str, Any], *, max_chars: int | None = None, seconds: float | None = None
) -> str:
    """Render chunk by chunk; raise `RenderLimit` once the output or the time passes its cap
    (`MAX_RENDER_CHARS`, `RENDER_SECONDS` unless given).

    The deadline is checked as chunks arrive; SIGALRM (main thread only, never over a timer
    someone else has set, previous handler restored) also stops loops that produce no output.
    """
    max_chars = MAX_RENDER_CHARS if max_chars is None else max_chars
    seconds = RENDER_SECONDS if seconds is None else seconds
    deadline = time.monotonic() + seconds
    parts: list[str] = []
    size = 0
    previous = _arm_alarm(seconds)
    try:
        for chunk in template.generate(**variables):
            parts.append(chunk)
            size += len(chunk)
            if size > max_chars:
                raise RenderLimit(f"produced more than {max_chars:,} characters")
            if time.monotonic() > deadline:
                raise RenderLimit(f"rendering took longer than {seconds:g} s")
    finally:
        if previous is not _NOT_ARMED:
            _disarm(previous)
    return "".join(parts)


_NOT_ARMED = object()


def _arm_alarm(seconds: float) -> Any:
    """Start a SIGALRM timer that raises `RenderLimit`; return the handler to restore, or
    `_NOT_ARMED` off the main thread, without setitimer, when a timer is already running, or when
    the current handler was not set from Python (it could not be put back)."""
    if (
        not hasattr(_signal, "setitimer")
        or threading.current_thread() is not threading.main_thread()
        or _signal.getitimer(_signal.ITIMER_REAL)[0] > 0
        or _signal.getsignal(_signal.SIGALRM) is None
    ):
        return _NOT_ARMED

    def expire(signum: int, frame: Any) -> None:
        raise RenderLimit(f"rendering took longer than {seconds:g} s")

    previous = _signal.signal(_signal.SIGALRM, expire)
    _signal.setitimer(_signal.ITIMER_REAL, seconds)
    return previous


def _disarm(previous: Any) -> None:
    """Stop the timer and restore the previous handler, even if the alarm fires meanwhile (a
    render that finished as its time ran out is kept)."""
    for _ in range(3):
        try:
            _signal.setitimer(_signal.ITIMER_REAL, 0)
            _signal.signal(_signal.SIGALRM, previous)
            return
        except RenderLimit:
            continue


@lru_cache(maxsize=32)
def compile_template(source: str, name: str) -> Any:
    """Compile once per (source, name); invalid Jinja is a `UserError` with the template's line."""
    import jinja2

    try:
        return _environment().from_string(source)
    except jinja2.TemplateSyntaxError as err:
        raise UserError(f"chat template {name}:{err.lineno}: invalid Jinja: {err.message}") from None


@lru_cache(maxsize=1)
def _environment() -> Any:
    import jinja2
    from jinja2 import nodes
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationBlocks(Extension):
        """`{% generation %}body{% endgeneration %}` renders body between generation markers."""

        tags = {"generation"}

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.CallBlock(self.call_method("_mark"), [], [], body).set_lineno(lineno)

        def _mark(self, caller: Any) -> str:
            return GEN_OPEN + caller() + GEN_CLOSE

    class Sandbox(ImmutableSandboxedEnvironment):
        """Also refuses `*` and `**` whose result alone would pass the caps ('x' * 10**9)."""

        intercepted_binops = frozenset(["*", "**"])

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            _check_binop(operator, left, right)
            return super().call_binop(context, operator, left, right)

    env = Sandbox(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols, GenerationBlocks], undefined=jinja2.Undefined
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


def _check_binop(operator: str, left: Any, right: Any) -> None:
    """Refuse repetitions longer than the output cap and huge powers before computing them.

    >>> _check_binop("*", "ab", 3)
    >>> _check_binop("**", 2, 10**6)
    Traceback (most recent call last):
    ...
    tunesmith.formatting.sandbox.RenderLimit: a power with exponent 1000000 is too large
    """
    if operator == "*":
        for seq, count in ((left, right), (right, left)):
            if isinstance(seq, (str, list, tuple)) and isinstance(count, int) and len(seq) * count > MAX_RENDER_CHARS:
                raise RenderLimit(f"produced more than {MAX_RENDER_CHARS:,} characters")
    elif isinstance(left, int) and isinstance(right, int) and right > _MAX_POWER and abs(left) > 1:
        raise RenderLimit(f"a power with exponent {right} is too large")


def _raise_exception(message: str) -> None:
    raise TemplateRefusal(message)


def _tojson(
    value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None, sort_keys: bool = False
) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)
