"""Show which tokens train: an Example as text segments marked trained or not, for a terminal or a page.

The text comes from decoding the example's own ids token by token (special tokens literally, e.g.
`<|im_end|>`), never from re-rendering the conversation, so what is shown is exactly what the
model sees and the highlight is exactly its labels. Pure: a tokenizer's `decode` is all it needs.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass, fields
from itertools import groupby
from typing import Any

from tunesmith.data.types import IGNORE_INDEX
from tunesmith.formatting.encode import Example
from tunesmith.formatting.prepare import LOW_TRAINABLE_SHARE, SplitReport

# Tokens of left context when decoding one token: decoders treat a sequence's first token
# specially (SentencePiece drops its leading space), so each token is decoded after a few others.
DECODE_CONTEXT = 4
# A decode ending in U+FFFD is a character whose bytes continue in the next token; wait at most
# this many tokens for the rest (the text may also hold a real U+FFFD).
MAX_PENDING = 4
TRAINED_STYLE = "bold black on green"
CONTEXT_STYLE = "dim"
OPEN_MARK, CLOSE_MARK = "⟦", "⟧"  # trained spans on a console without colour


@dataclass(frozen=True)
class Segment:
    """Consecutive tokens that all train, or all do not, and the text they decode to."""

    text: str
    trained: bool
    tokens: int


@dataclass(frozen=True)
class RowView:
    """One example as it will train: where it came from, its counts, its segments, its problems."""

    source: str
    tokens: int
    trained_tokens: int
    segments: tuple[Segment, ...]
    notes: tuple[str, ...]


@dataclass(frozen=True)
class AuditLine:
    """One number of a split's audit: its `SplitReport` field, a label, and whether it is a problem."""

    key: str
    label: str
    value: int
    shown: str
    alert: bool


# Labels for the audit's counters; a counter added to SplitReport later shows under its own name.
AUDIT_LABELS = {
    "rows": "rows",
    "examples": "training sequences",
    "tokens": "tokens",
    "trainable_tokens": "trained tokens",
    "truncated": "rows cut at max_length",
    "truncated_turns": "assistant turns cut at max_length",
    "missing_end_of_turn": "rows whose end-of-turn token does not train",
    "double_bos": "rows starting with two BOS tokens",
}
_SIZES = ("rows", "examples", "tokens", "trainable_tokens")  # every other counter counts a problem


def token_pieces(decode: Callable[[list[int]], str], ids: list[int]) -> list[str]:
    """The text each token adds to the decoded sequence, so the pieces join to the whole decode.

    A character split over several tokens (an emoji's bytes) is given to the last of them.

    >>> vocab = {1: b"<s>", 2: b"ok", 3: b"\\xf0\\x9f", 4: b"\\x98\\x80", 5: b"\\n"}
    >>> token_pieces(lambda ids: b"".join(vocab[i] for i in ids).decode(errors="replace"), [1, 2, 3, 4, 5])
    ['<s>', 'ok', '', '😀', '\\n']
    """
    pieces: list[str] = []
    starts = [0]  # where each piece's tokens begin: a decode from one never begins inside a character
    for i in range(len(ids)):
        start, left = starts[-1], starts[max(0, len(starts) - 1 - DECODE_CONTEXT)]
        before, after = decode(ids[left:start]), decode(ids[left : i + 1])
        if after.endswith("\ufffd") and i + 1 < len(ids) and i + 1 - start < MAX_PENDING:
            continue
        text = after[len(before) :] if after.startswith(before) else after
        pieces.extend([""] * (i - start) + [text])
        starts.append(i + 1)
    return pieces


def segments(pieces: list[str], trained: list[bool]) -> tuple[Segment, ...]:
    """Merge consecutive token pieces with the same trained flag.

    >>> segments(["a", "b", "c"], [False, True, True])
    (Segment(text='a', trained=False, tokens=1), Segment(text='bc', trained=True, tokens=2))
    """
    out = []
    for flag, group in groupby(zip(pieces, trained), key=lambda pair: pair[1]):
        texts = [piece for piece, _ in group]
        out.append(Segment("".join(texts), flag, len(texts)))
    return tuple(out)


def view_example(tokenizer: Any, example: Example, *, part: str | None = None) -> RowView:
    """Decode an example token by token and mark the tokens whose label trains; `part` says which
    of a row's sequences this is, when the row gave more than one."""

    def decode(ids: list[int]) -> str:
        return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    trained = [label != IGNORE_INDEX for label in example.labels]
    return RowView(
        source=example.source_id,
        tokens=len(example.input_ids),
        trained_tokens=sum(trained),
        segments=segments(token_pieces(decode, list(example.input_ids)), trained),
        notes=tuple(([part] if part else []) + example_notes(example)),
    )


def example_notes(example: Example) -> list[str]:
    """What the audit would count against this example, in words."""
    notes = []
    if example.truncated:
        cut = f", {example.truncated_turns} trained turn(s) with it" if example.truncated_turns else ""
        notes.append(f"cut at max_length{cut}")
    if not example.eot_trained:
        notes.append("an assistant turn's end-of-turn token does not train")
    if example.double_bos:
        notes.append("starts with two BOS tokens")
    if example.n_trainable == 0:
        notes.append("trains no token")
    return notes


def visible(text: str) -> str:
    """A trained span's text with its whitespace made visible: a newline shows as ↵ before it,
    a span of only spaces and tabs as · and →.

    >>> visible("ok\\n"), visible("  \\t"), visible("a b")
    ('ok↵\\n', '··→', 'a b')
    """
    if text and not text.strip(" \t"):
        return text.replace(" ", "·").replace("\t", "→")
    return text.replace("\n", "↵\n")


def audit_lines(report: SplitReport) -> list[AuditLine]:
    """Every integer counter of a split's report, problems (non-zero counters of trouble) flagged.

    >>> report = SplitReport(rows=2, tokens=50, trainable_tokens=10, truncated=1, missing_end_of_turn=0)
    >>> [(a.key, a.shown, a.alert) for a in audit_lines(report)][3:5]
    [('trainable_tokens', '10 (20.0%)', False), ('truncated', '1', True)]
    """
    order = list(AUDIT_LABELS)
    lines = []
    for field in sorted(fields(report), key=lambda f: order.index(f.name) if f.name in order else len(order)):
        value = getattr(report, field.name)
        if not isinstance(value, int):
            continue
        shown = f"{value:,}" + (f" ({report.trainable_share:.1%})" if field.name == "trainable_tokens" else "")
        if field.name == "trainable_tokens":
            alert = report.trainable_share < LOW_TRAINABLE_SHARE
        else:
            alert = field.name not in _SIZES and value > 0
        label = AUDIT_LABELS.get(field.name, field.name.replace("_", " "))
        lines.append(AuditLine(field.name, label, value, shown, alert))
    return lines


def row_header(row: RowView) -> str:
    """`file:line  N tokens, M trained` and the row's problems, on one line.

    >>> row_header(RowView("a.jsonl:3", 40, 9, (), ("cut at max_length",)))
    'a.jsonl:3  40 tokens, 9 trained  [cut at max_length]'
    """
    notes = "".join(f"  [{note}]" for note in row.notes)
    return f"{row.source}  {row.tokens} tokens, {row.trained_tokens} trained{notes}"


def rich_text(row: RowView, *, marks: bool = False) -> Any:
    """The row as a rich `Text`: trained tokens highlighted, the rest dim; `marks` also wraps
    trained spans in ⟦ ⟧, for a console that shows no colour."""
    from rich.text import Text

    text = Text()
    for seg in row.segments:
        if seg.trained:
            shown = visible(seg.text)
            text.append(f"{OPEN_MARK}{shown}{CLOSE_MARK}" if marks else shown, style=TRAINED_STYLE)
        else:
            text.append(seg.text, style=CONTEXT_STYLE)
    return text


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 70em; }
table.audit { border-collapse: collapse; margin: 1em 0; }
table.audit td { padding: 0.2em 1em 0.2em 0; } table.audit td.n { text-align: right; }
tr.alert td { color: #a33; font-weight: bold; }
.legend span { padding: 0 0.4em; }
.row { border-top: 1px solid #ccc; margin-top: 1.5em; }
.row h2 { font-size: 1em; font-family: monospace; } .row h2 small { color: #666; font-weight: normal; }
.note { color: #a33; }
pre { white-space: pre-wrap; word-break: break-word; background: #fafafa; padding: 0.6em; }
.t { background: #b7f0b1; font-weight: bold; } .c { color: #999; }
"""


def html_page(rows: list[RowView], *, title: str, subtitle: str, audit: list[AuditLine], warnings: list[str]) -> str:
    """A self-contained page (inline CSS, no scripts, no network): the audit table first, a
    legend, then one block per row. Every piece of data is HTML-escaped; each audit number also
    sits raw in `data-key`/`data-value`, for tools.
    """
    esc = html.escape
    lines = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(title)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        f"<p>{esc(subtitle)}</p>",
        '<table class="audit">',
    ]
    for a in audit:
        lines.append(
            f"<tr{' class=alert' if a.alert else ''}><td>{esc(a.label)}</td>"
            f'<td class="n" data-key="{esc(a.key)}" data-value="{a.value}">{esc(a.shown)}</td></tr>'
        )
    lines.append("</table>")
    lines += [f'<p class="note">warning: {esc(note)}</p>' for note in warnings]
    lines.append(
        '<p class="legend">Legend: <span class="t">trained token</span> <span class="c">context, '
        "not trained</span> (↵ marks a trained newline)</p>"
    )
    for row in rows:
        notes = "".join(f' <span class="note">[{esc(note)}]</span>' for note in row.notes)
        body = "".join(
            f'<span class="t">{esc(visible(s.text))}</span>' if s.trained else f'<span class="c">{esc(s.text)}</span>'
            for s in row.segments
            if s.text
        )
        lines.append(
            f'<div class="row"><h2>{esc(row.source)} <small>{row.tokens} tokens, '
            f"{row.trained_tokens} trained</small>{notes}</h2><pre>{body}</pre></div>"
        )
    lines.append("</body></html>")
    return "\n".join(lines) + "\n"
