"""`inspect`: the first rows of a split exactly as training will see them, trained tokens highlighted.

It answers "which tokens will actually train?" before any compute is spent. The rows, the masks
and the audit come from `prepare`, the very function a training run starts with (same cache, same
bad-row policy, same checks), and no weights are loaded. `--json` also writes the first rows' Examples
as JSON lines, with the text of each trained span and each turn's generation prompt, for scripts and
tests to read instead of the highlight.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import groupby, islice
from pathlib import Path
from typing import Any

from tunesmith.config import Config
from tunesmith.data.types import IGNORE_INDEX
from tunesmith.errors import UserError
from tunesmith.formatting.encode import Example, encode_sample
from tunesmith.formatting.pairs import Scored
from tunesmith.formatting.prepare import SplitReport, warnings_for
from tunesmith.formatting.view import (
    CONTEXT_STYLE,
    TRAINED_STYLE,
    AuditLine,
    RowView,
    audit_lines,
    html_page,
    rich_text,
    row_header,
    view_example,
)
from tunesmith.runfolder import write_jsonl, write_text
from tunesmith.training.prepare import Prepared, prepare

SPLITS = ("train", "validation")


@dataclass(frozen=True)
class InspectResult:
    """What `inspect` showed: the rows it rendered and the audit of the whole split."""

    split: str
    rows: list[RowView]
    report: SplitReport
    audit: list[AuditLine]
    warnings: list[str]
    html_path: Path | None
    json_path: Path | None = None


def inspect(
    config: Config,
    *,
    rows: int = 3,
    split: str = "train",
    console: Any,
    html_path: str | Path | None = None,
    json_path: str | Path | None = None,
) -> InspectResult:
    """Print the first `rows` examples of `split` with their trained tokens highlighted, then the
    split's audit; write the same as a self-contained HTML page when `html_path` is given, and the
    first rows' Examples as JSON lines (`json_records`) when `json_path` is given."""
    _check_request(config, rows, split)
    prepared = prepare(config, console, print_warnings=False)
    data = prepared.splits[split]
    views = [view_example(prepared.tokenizer, example, part=part) for example, part in first_rows(data.examples, rows)]
    audit = audit_lines(data.report)
    warnings = warnings_for(data.report, split)
    console.print(f"\n{_setting(prepared)}", markup=False, highlight=False, soft_wrap=True)
    _print_rows(console, views, shown=min(rows, data.report.rows), of=data.report.rows)
    _print_audit(console, split, audit, warnings)
    written = None
    if html_path is not None:
        title = f"tunesmith inspect: {split}, first {min(rows, data.report.rows)} of {data.report.rows} rows"
        page = html_page(views, title=title, subtitle=_setting(prepared), audit=audit, warnings=warnings)
        written = write_text(Path(html_path), page)
        console.print(f"Wrote {written}", markup=False, highlight=False, soft_wrap=True)
    json_written = None
    if json_path is not None:
        json_written = write_jsonl(Path(json_path), json_records(prepared, split, rows))
        console.print(f"Wrote {json_written}", markup=False, highlight=False, soft_wrap=True)
    return InspectResult(split, views, data.report, audit, warnings, written, json_written)


def json_records(prepared: Prepared, split: str, rows: int) -> list[dict[str, Any]]:
    """One record per Example of the first `rows` rows of `split`: {source, input_ids, labels,
    text, trained, prompts}. `text` is the rendered text the Example was tokenized from, `trained`
    the text of each trained turn as the model generates it (through its stop token), `prompts`
    each turn's generation prompt.

    The split is read again and its first rows encoded with `prepare`'s own template, tokenizer
    and markers (a cached split holds ids but no text); an Example that trains nothing is left
    out, as training leaves it out."""
    from tunesmith.data.load import load_split, source_specs

    config = prepared.config
    if rows == 0:
        return []
    if config.train.objective != "sft":
        return _preference_records(prepared, split, rows)
    loaded = load_split(
        source_specs(config.data, split), split=split, policy=config.data.on_bad_row, seed=config.train.seed
    )
    records: list[dict[str, Any]] = []
    for sample in loaded.samples[:rows]:
        trace: list[dict[str, Any]] = []
        examples = encode_sample(
            sample,
            prepared.template,
            prepared.tokenizer,
            train_on=config.template.train_on,
            max_length=config.template.max_length,
            markers=prepared.markers,
            trace=trace,
        )
        records += [_record_of(example, trace, prepared.tokenizer) for example in examples if example.n_trainable > 0]
    return records


def _preference_records(prepared: Prepared, split: str, rows: int) -> list[dict[str, Any]]:
    """One record per preference row of the first `rows`: {source, desirable (KTO), prompt,
    sequences}: the prompt decoded once (every sequence of a row starts with it), each sequence
    {part, input_ids, labels, trained}, `part` naming it as the table does (chosen, rejected, ...)."""
    from tunesmith.formatting.pairs import prompt_ids

    tokenizer = prepared.tokenizer
    records = []
    for row in prepared.splits[split].examples[:rows]:
        sequences = [
            {
                "part": part,
                "input_ids": example.input_ids,
                "labels": example.labels,
                "trained": tokenizer.decode([t for t, y in zip(example.input_ids, example.labels) if y >= 0]),
            }
            for example, part in first_rows([row], 1)
        ]
        prompt = tokenizer.decode(prompt_ids(row.sequences[0]))
        record: dict[str, Any] = {"source": row.source_id, "prompt": prompt, "sequences": sequences}
        if row.desirable is not None:
            record["desirable"] = row.desirable
        records.append(record)
    return records


def _record_of(example: Example, trace: list[dict[str, Any]], tokenizer: Any) -> dict[str, Any]:
    """The trace record of `example`, matched by its ids and labels (the trace need not be in the
    Examples' order); raw text and pre-tokenized rows leave none, so theirs is made here."""
    for number, record in enumerate(trace):
        if record["input_ids"] == example.input_ids and record["labels"] == example.labels:
            return trace.pop(number)
    return _untemplated_record(tokenizer, example)


def _untemplated_record(tokenizer: Any, example: Example) -> dict[str, Any]:
    """The record of a sample no template renders (raw text, pre-tokenized): its ids decoded, and
    each run of trained ids decoded."""
    runs = [
        [token for token, _ in group]
        for trains, group in groupby(zip(example.input_ids, example.labels), key=lambda pair: pair[1] != IGNORE_INDEX)
        if trains
    ]
    return {
        "source": example.source_id,
        "input_ids": example.input_ids,
        "labels": example.labels,
        "text": tokenizer.decode(example.input_ids),
        "trained": [tokenizer.decode(ids) for ids in runs],
        "prompts": [],
    }


def _check_request(config: Config, rows: int, split: str) -> None:
    """Refuse a request that cannot be met before any data is read."""
    if rows < 0:
        raise UserError(f"--rows: expected 0 or more rows, got {rows}")
    if split not in SPLITS:
        raise UserError(f"--split: expected one of {', '.join(SPLITS)}, got {split!r}")
    if not getattr(config.data, split):
        raise UserError(f"data.{split} is not set in the config; there is no {split} split to inspect")


def first_rows(examples: list[Any], rows: int) -> list[tuple[Example, str | None]]:
    """The examples of the first `rows` rows, each with which of its row's sequences it is.

    A row is one Example, or one per trained turn when the template rewrites history; a row's
    Examples are consecutive and share its `file:line`. A preference row (formatting/pairs.py) shows
    its chosen and rejected answers, or a KTO row its answer and its mismatched partner.

    >>> from tunesmith.formatting.encode import Example
    >>> ex = [Example([1], [1], 1, False, s, True) for s in ("a:1", "a:2", "a:2", "a:3")]
    >>> [(e.source_id, part) for e, part in first_rows(ex, 2)]
    [('a:1', None), ('a:2', 'sequence 1 of 2'), ('a:2', 'sequence 2 of 2')]
    """
    out: list[tuple[Example, str | None]] = []
    if examples and isinstance(examples[0], Scored):
        for row in examples[:rows]:
            if row.desirable is None:
                names = ["chosen", "rejected"]
            else:
                names = ["good answer" if row.desirable else "bad answer", "mismatched (KL reference point only)"]
            out += list(zip(row.sequences, names))
        return out
    for _, run in islice(groupby(examples, key=lambda e: e.source_id), rows):
        group = list(run)
        out += [(e, f"sequence {k} of {len(group)}" if len(group) > 1 else None) for k, e in enumerate(group, 1)]
    return out


def _setting(p: Prepared) -> str:
    """What decides the masks, in one line: model, template, train_on, max_length."""
    t = p.config.template
    return (
        f"model {p.config.model.name}; template: {p.template.name}; train_on: {t.train_on}; max_length: {t.max_length}"
    )


def _print_rows(console: Any, views: list[RowView], *, shown: int, of: int) -> None:
    """Each row's header, then its text; a console without colour marks trained spans ⟦ like this ⟧."""
    from rich.text import Text

    plain = console.color_system is None or console.no_color
    legend = Text("Legend: ")
    legend.append("trained" if not plain else "⟦trained⟧", style=TRAINED_STYLE)
    legend.append(" ")
    legend.append("context, not trained", style=CONTEXT_STYLE)
    legend.append(f"; ↵ is a trained newline. First {shown} of {of} rows:")
    console.print(legend, soft_wrap=True)
    for row in views:
        console.print(f"\n── {row_header(row)}", style="bold", markup=False, highlight=False, soft_wrap=True)
        console.print(rich_text(row, marks=plain), soft_wrap=True)


def _print_audit(console: Any, split: str, audit: list[AuditLine], warnings: list[str]) -> None:
    from rich.table import Table

    table = Table(title=f"Audit of the {split} split (every row)", show_header=False, show_edge=False)
    table.add_column(justify="left")
    table.add_column(justify="right")
    for line in audit:
        style = "bold red" if line.alert else None
        table.add_row(line.label, line.shown, style=style)
    console.print()
    console.print(table)
    for note in warnings:
        console.print(f"warning: {note}", style="yellow", markup=False, highlight=False, soft_wrap=True)
