"""Any supported data format to tunesmith's normalized JSONL, written whole or not at all (runfolder.AtomicFiles).

The output holds everything the normalized sample holds and nothing else: conversations as
`{"messages": [...], "tools"?, "id"?}` (OpenAI form, tool call arguments as the data gave them,
JSON text or an object; reasoning as `reasoning_content`), raw text
as `{"text"}`, pre-tokenized rows as `{"input_ids", "labels"?}`. Reading a converted file back
gives the same samples. Bad rows are never written; by default a file with bad rows produces no
output at all, so a half-converted dataset cannot be mistaken for a whole one.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.data.check import AnySample, FileStream, has_error
from tunesmith.data.options import FormatOptions
from tunesmith.data.preference import KtoSample, PreferencePair, PreferenceSample
from tunesmith.data.types import Conversation, Issue, Message, Provenance, Sample, TextSample, ToolCall
from tunesmith.runfolder import AtomicFiles


def sample_to_row(sample: Sample | PreferenceSample) -> dict[str, Any]:
    """The normalized JSON object of a sample; optional keys only when set.

    >>> from tunesmith.data.types import Provenance
    >>> sample_to_row(TextSample("hello", Provenance("a.txt", 1), id="7"))
    {'text': 'hello', 'id': '7'}
    """
    if isinstance(sample, (PreferencePair, KtoSample)):
        return preference_to_row(sample)
    if isinstance(sample, Conversation):
        row: dict[str, Any] = {"messages": [_message_to_dict(m) for m in sample.messages]}
        if sample.tools:
            row["tools"] = list(sample.tools)
    elif isinstance(sample, TextSample):
        row = {"text": sample.text}
    else:
        row = {"input_ids": list(sample.input_ids)}
        if sample.labels is not None:
            row["labels"] = list(sample.labels)
    if sample.id:
        row["id"] = sample.id
    return row


def preference_to_row(sample: PreferenceSample) -> dict[str, Any]:
    """A preference row in TRL's conversational form: `prompt` + `chosen` + `rejected` message lists,
    or `prompt` + `completion` + `label` for KTO (what tunesmith reads back as format `trl`/`kto`)."""
    row: dict[str, Any] = {"prompt": [_message_to_dict(m) for m in sample.prompt]}
    if isinstance(sample, PreferencePair):
        row["chosen"] = [_message_to_dict(m) for m in sample.chosen]
        row["rejected"] = [_message_to_dict(m) for m in sample.rejected]
    else:
        row["completion"] = [_message_to_dict(m) for m in sample.completion]
        row["label"] = sample.desirable
    if sample.tools:
        row["tools"] = list(sample.tools)
    return row


def _message_to_dict(message: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.weight is not None:
        out["weight"] = int(message.weight) if message.weight in (0, 1) else message.weight
    if message.reasoning is not None:
        out["reasoning_content"] = message.reasoning
    if message.tool_calls:
        out["tool_calls"] = [_tool_call_to_dict(call) for call in message.tool_calls]
    if message.name is not None:
        out["name"] = message.name
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    return out


def _tool_call_to_dict(call: ToolCall) -> dict[str, Any]:
    """OpenAI form with `arguments` kept exactly as the data gave them (JSON text or an object)."""
    out: dict[str, Any] = {"type": "function", "function": {"name": call.name, "arguments": call.arguments}}
    if call.id is not None:
        out = {"id": call.id, **out}
    return out


def jsonl_line(row: dict[str, Any]) -> bytes:
    """One JSONL line, UTF-8; text with lone surrogates (legal in JSON input) is written escaped.

    >>> jsonl_line({"text": "é"}), jsonl_line({"text": "\\ud800"})
    (b'{"text": "\\xc3\\xa9"}\\n', b'{"text": "\\\\ud800"}\\n')
    """
    try:
        return (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
    except UnicodeEncodeError:
        return (json.dumps(row) + "\n").encode("ascii")


@dataclass
class ConvertSummary:
    out_path: Path
    written: bool
    """False when bad rows stopped the output (and `keep_good` was off)."""
    rows: int = 0
    rows_written: int = 0
    """Good rows: written when `written` is True."""
    bad: list[Issue] = field(default_factory=list)
    """The error issues of the rows left out, in file order."""
    files: list[tuple[str, str, str]] = field(default_factory=list)
    """(reference, detected format, why) per input file."""


def good_samples(references: list[str], options: FormatOptions, summary: Any) -> Iterator[AnySample]:
    """The good samples of every file, in order. Counts rows into `summary.rows`, collects the errors
    of bad rows and of empty files into `summary.bad`, and each file's detected format into
    `summary.files` (what `convert` and `split` both report). Preference rows are read too; a file
    of chat rows after a file of preference rows (or the other way round) is refused as a whole,
    since one output cannot hold both."""
    first_kind: tuple[str, bool] | None = None
    for reference in references:
        stream = FileStream(reference, options, preference=True)
        for _, sample, issues in stream:
            summary.rows += 1
            if first_kind is None and stream.format is not None:
                first_kind = (reference, stream.holds_preferences)
            if first_kind is not None and stream.format is not None and stream.holds_preferences != first_kind[1]:
                kinds = ("chat", "preference") if first_kind[1] else ("preference", "chat")
                summary.bad.append(
                    Issue(
                        "mixed_kinds",
                        "error",
                        Provenance(reference, 0),
                        "",
                        f"{kinds[0]} rows, after {kinds[1]} rows in {first_kind[0]}: one output cannot hold both",
                        "convert them separately",
                    )
                )
                break
            if sample is None:
                summary.bad += [issue for issue in issues if issue.severity == "error"]
                continue
            yield sample
        if stream.rows == 0:
            summary.bad.append(stream.empty_file_issue())
        summary.files.append((reference, stream.format or "unknown", stream.reason))


def convert_files(
    references: list[str],
    out_path: str | Path,
    options: FormatOptions,
    *,
    keep_good: bool = False,
    to: str | None = None,
) -> ConvertSummary:
    """Convert every file to one normalized JSONL file (or, with `to`, a provider's JSONL: data/providers.py),
    atomically.

    With bad rows the output is written only under `keep_good=True` (then without those rows); a
    file the provider would refuse as a whole (too few rows, too large) is never written.
    """
    from tunesmith.data.providers import NotCarried, file_issues, provider_preference_row, provider_row

    summary = ConvertSummary(Path(out_path), written=False)
    size = 0
    with AtomicFiles([summary.out_path]) as files:
        for sample in good_samples(references, options, summary):
            try:
                if not to:
                    row = sample_to_row(sample)
                elif isinstance(sample, (PreferencePair, KtoSample)):
                    row = provider_preference_row(sample, to)
                else:
                    row = provider_row(sample, to)
            except NotCarried as refused:
                assert to is not None
                summary.bad.append(refused.issue(to, sample.source))
                continue
            line = jsonl_line(row)
            if keep_good or not summary.bad:  # once a row is bad the output is lost: stop writing it
                files.write(summary.out_path, line)
                size += len(line)
            summary.rows_written += 1
        whole = file_issues(to, summary.rows_written, size, str(summary.out_path)) if to else []
        summary.bad += whole
        if not whole and (keep_good or not has_error(summary.bad)):
            files.commit()
            summary.written = True
    return summary
