"""Ollama's TEMPLATE (Go text/template over `.Messages`) equivalent to a run's training template.

Jinja cannot be translated in general. Instead the training template is rendered with marker
contents and the text around each marker read off: what wraps a system, user and assistant turn,
the generation prompt, the text after a final assistant turn, what the template writes when a
conversation has no system message (a default system prompt), and, for templates that join the
system prompt to the first user turn (Mistral, Gemma), what stands between the two. Those pieces
become a Go template, which must then reproduce the Jinja render exactly on several conversations;
a template that does more (rewrites earlier turns, writes today's date) is refused, before any file.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

from tunesmith.errors import TunesmithError, UserError
from tunesmith.export.gotemplate import render_go_template
from tunesmith.runfolder import RunRecord

_OPEN, _CLOSE = "\ue020", "\ue021"  # private-use: marker contents no template produces
_MARKED = re.compile(f"{_OPEN}(\\d+){_CLOSE}")

# Conversations the Go template must render exactly as the training template does. Contents have
# newlines, quotes, braces and a reasoning block, so rewriting or escaping shows.
_SYSTEM = "You are terse.\nAnswer in one line."
_USER = ('Say "hi" {{ twice }}', "Now in French, please.", "And in German?")
_ASSISTANT = ("<think>\nA greeting, twice.\n</think>\n\nhi hi", "salut {salut}", "hallo\thallo")
_VERIFY_SHAPES = (
    ("user", "assistant"),
    ("user",),
    ("user", "assistant", "user"),
    ("user", "assistant", "user", "assistant"),
    ("user", "assistant", "user", "assistant", "user"),
    ("user", "assistant", "user", "assistant", "user", "assistant"),
)


@dataclass(frozen=True)
class TurnWrappers:
    """The text a chat template writes around each turn, read off a marked render."""

    header: str
    """Before everything (the BOS token the template writes), or empty."""
    default_system: str
    """What the template writes first when the conversation has no system message (a default prompt)."""
    system: tuple[str, str] | None
    """(prefix, suffix) of a system message; None when the template refuses the system role or folds it."""
    user: tuple[str, str]
    assistant: tuple[str, str]
    generation_prompt: str
    """After the last message when it is not the assistant's (add_generation_prompt)."""
    closing: str
    """After the last message when it is the assistant's (no generation prompt), e.g. an eos token."""
    system_fold: str | None = None
    """For a template that writes the system prompt inside the first user turn (Mistral, Gemma 3):
    what stands between the system prompt and that user message's content."""


def ollama_template(meta: RunRecord, *, header: bool = True) -> str:
    """The Go TEMPLATE equivalent to the run's training template, checked to render the same text as
    the Jinja on several conversations; a UserError when Ollama's TEMPLATE cannot represent it.

    `header=False` leaves out a leading BOS token the template writes (the GGUF tokenizer adds one).
    """
    from tunesmith.formatting.template import ChatTemplate

    chat = ChatTemplate.from_record(meta)
    _refuse_dated(chat)
    wrappers = chat_wrappers(chat, list(meta.end_of_turn))
    source = go_template(wrappers)
    for messages, prompt in _verify_conversations(wrappers.system is not None or wrappers.system_fold is not None):
        expected = chat.render(messages, add_generation_prompt=prompt)
        if render_go_template(source, messages) != expected:
            raise _unrepresentable(
                chat,
                f"a {len(messages)}-message conversation renders differently (the "
                "template rewrites or moves contents, e.g. drops earlier reasoning)",
            )
    return source if header else go_template(wrappers, header=False)


def chat_wrappers(chat: Any, markers: list[str] | tuple[str, ...]) -> TurnWrappers:
    """Read the turn wrappers off renders of a `ChatTemplate` with marker contents.

    Between two contents stands one turn's suffix and the next one's prefix; the suffix is what
    every continuation after that role starts with, cut after its end-of-turn marker when it has
    one (a generation prompt and the next user turn may share more, like Phi-3's `<|`).
    """
    system = _pieces(chat, ("system", "user", "assistant", "user", "assistant"), False)
    has_system = system is not None
    lead = ("system",) if has_system else ()
    full = system or _pieces(chat, ("user", "assistant", "user", "assistant"), False)
    asked = _pieces(chat, (*lead, "user", "assistant", "user"), True)
    unasked = _pieces(chat, (*lead, "user", "assistant", "user"), False)
    bare = _pieces(chat, ("user", "assistant"), False)
    if full is None or asked is None or unasked is None or bare is None:
        raise _unrepresentable(chat, "it refuses a plain user/assistant conversation or rewrites its contents")
    between = dict(zip(["su", "ua", "au"] if has_system else ["ua", "au"], full[1:4]))
    assistant_end, user_asked, user_unasked = full[-1], asked[-1], unasked[-1]
    user_suffix = _suffix([between["ua"], user_asked, user_unasked], markers)
    assistant_suffix = _suffix([between["au"], assistant_end], markers)
    user_prefix = between["au"][len(assistant_suffix) :]
    first_user = bare[0]
    # Folded: the system prompt stands where the first user content would, joined to it by "su".
    folded = system is not None and system[0] == first_user and not between["su"].endswith(user_prefix)
    if not first_user.endswith(user_prefix) or (has_system and not folded and not between["su"].endswith(user_prefix)):
        raise _unrepresentable(chat, "a user turn is written differently depending on what precedes it")
    before_user = first_user[: len(first_user) - len(user_prefix)]
    bos = str(chat.special_tokens.get("bos_token") or "")
    starts = [before_user, system[0]] if system else [before_user]
    header = bos if bos and "bos_token" in chat.source and all(s.startswith(bos) for s in starts) else ""
    if folded and before_user and before_user == bos:  # written first with or without a system prompt: the BOS
        header = bos
    if folded and before_user[len(header) :]:
        raise _unrepresentable(chat, "it writes text before the first turn besides the BOS token")
    wrapped_system = None
    if system is not None and not folded:
        wrapped_system = (system[0][len(header) :], between["su"][: len(between["su"]) - len(user_prefix)])
    return TurnWrappers(
        header=header,
        default_system=before_user[len(header) :],
        system=wrapped_system,
        user=(user_prefix, user_suffix),
        assistant=(between["ua"][len(user_suffix) :], assistant_suffix),
        generation_prompt=user_asked[len(user_suffix) :],
        closing=assistant_end[len(assistant_suffix) :],
        system_fold=between["su"] if folded else None,
    )


def go_template(w: TurnWrappers, *, header: bool = True) -> str:
    """Ollama's TEMPLATE (Go text/template over .Messages) for these wrappers. Every literal is a Go
    string, so braces, quotes and control characters in the template's text need no other care."""
    lines = []
    if header and w.header:
        lines.append(f"{{{{- {_go_string(w.header)} }}}}")
    if w.system_fold is not None:  # held until the next user turn, which writes it before its content
        lines.append('{{- $system := "" }}')
    lines.append("{{- range $i, $m := .Messages }}")
    lines.append("{{- $last := eq (len (slice $.Messages $i)) 1 }}")
    if w.default_system:
        lines.append(f'{{{{- if and (eq $i 0) (ne .Role "system") }}}}{_print(w.default_system)}{{{{ end }}}}')
    keyword = "if"
    if w.system_fold is not None:
        lines.append('{{- if eq .Role "system" }}{{ $system = .Content }}')
        keyword = "else if"
    roles = [("system", w.system), ("user", w.user), ("assistant", w.assistant)]
    for role, wrapper in roles:
        if wrapper is not None:
            content = "{{ .Content }}"
            if role == "user" and w.system_fold is not None:
                content = (
                    f'{{{{ if $system }}}}{{{{ $system }}}}{_print(w.system_fold)}{{{{ $system = "" }}}}{{{{ end }}}}'
                    + content
                )
            lines.append(f'{{{{- {keyword} eq .Role "{role}" }}}}{_print(wrapper[0])}{content}{_print(wrapper[1])}')
            keyword = "else if"
    lines.append("{{- end }}")
    ending = ""
    if w.closing:
        ending = (
            f'{{{{ if eq .Role "assistant" }}}}{_print(w.closing)}'
            f"{{{{ else }}}}{_print(w.generation_prompt)}{{{{ end }}}}"
        )
    elif w.generation_prompt:
        ending = f'{{{{ if ne .Role "assistant" }}}}{_print(w.generation_prompt)}{{{{ end }}}}'
    if ending:
        lines.append(f"{{{{- if $last }}}}{ending}{{{{ end }}}}")
    lines.append("{{- end }}")
    return "\n".join(lines)


def _pieces(chat: Any, roles: tuple[str, ...], prompt: bool) -> list[str] | None:
    """The template's text around each marker content, in order; None if it refuses the conversation
    or does not write each content once, in order."""
    messages = [{"role": role, "content": f"{_OPEN}{i}{_CLOSE}"} for i, role in enumerate(roles)]
    try:
        text = chat.render(messages, add_generation_prompt=prompt)
    except UserError:
        return None
    parts = _MARKED.split(text)
    if [int(i) for i in parts[1::2]] != list(range(len(roles))):
        return None
    return parts[::2]


def _suffix(continuations: list[str], markers: list[str] | tuple[str, ...]) -> str:
    """What all continuations after a turn's content share, cut after the first end-of-turn marker
    (and the whitespace after it) when there is one.

    >>> _suffix(["<|end|>\\n<|user|>\\n", "<|end|>\\n<|endoftext|>"], ["<|end|>"])
    '<|end|>\\n'
    """
    common = os.path.commonprefix(continuations)
    ends = [common.find(m) + len(m) for m in markers if m and m in common]
    if not ends:
        return common
    cut = min(ends)
    while cut < len(common) and common[cut] in " \t\r\n":
        cut += 1
    return common[:cut]


def _verify_conversations(has_system: bool) -> list[tuple[list[dict], bool]]:
    """(messages, add_generation_prompt) pairs: 2-, 3- and 4-turn chats, with and without a system message."""
    cases = []
    for shape in _VERIFY_SHAPES:
        texts = {"user": iter(_USER), "assistant": iter(_ASSISTANT)}
        messages = [{"role": role, "content": next(texts[role])} for role in shape]
        prompt = shape[-1] != "assistant"
        cases.append((messages, prompt))
        if has_system:
            cases.append(([{"role": "system", "content": _SYSTEM}, *messages], prompt))
    return cases


def trims_contents(chat: Any) -> bool:
    """Whether the template strips whitespace around a message's content (Gemma's `| trim`)."""
    padded = f" {_OPEN}0{_CLOSE}\n"
    try:
        text = chat.render([{"role": "user", "content": padded}], add_generation_prompt=True)
    except UserError:
        return False
    return padded not in text and padded.strip() in text


def _refuse_dated(chat: Any) -> None:
    """A template that writes today's date (strftime_now) renders differently every day; Ollama's
    `currentDate` has another format, so no TEMPLATE can match it."""
    from tunesmith.formatting.sandbox import compile_template, render_capped

    dated = "\ue022"
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    variables = dict(
        chat.special_tokens, messages=messages, add_generation_prompt=False, tools=None, strftime_now=lambda fmt: dated
    )  # shadows the sandbox's global of that name
    try:
        text = render_capped(compile_template(chat.source, chat.name), variables)
    except Exception:  # a refusal here is reported by the render checks that follow
        return
    if dated in text:
        raise _unrepresentable(
            chat,
            "it writes today's date into every prompt (strftime_now); train with a "
            "template without the date to export to Ollama",
        )


def _unrepresentable(chat: Any, reason: str) -> UserError:
    return UserError(f"chat template {chat.name}: Ollama's TEMPLATE cannot represent it: {reason}")


def _print(text: str) -> str:
    return f"{{{{ {_go_string(text)} }}}}" if text else ""


def _go_string(text: str) -> str:
    """A Go interpreted string literal for `text`; non-printable characters as escapes.

    >>> print(_go_string('a "b"\\n{{c}}'))
    "a \\"b\\"\\n{{c}}"
    """
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch in "\n\t\r":
            out.append({"\n": "\\n", "\t": "\\t", "\r": "\\r"}[ch])
        elif ch.isprintable():
            out.append(ch)
        elif 0xD800 <= ord(ch) <= 0xDFFF:
            raise TunesmithError(f"template text holds a lone surrogate {ch!r}")
        else:
            out.append(f"\\u{ord(ch):04x}" if ord(ch) <= 0xFFFF else f"\\U{ord(ch):08x}")
    return '"' + "".join(out) + '"'
