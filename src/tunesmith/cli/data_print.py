"""What `tunesmith data` prints: plain text through rich, never markup from the data (field paths
hold brackets), never wrapped (file:line stays whole)."""

from __future__ import annotations

from typing import Any

SHOWN_ISSUES = 20


def print_files(console: Any, report: Any) -> None:
    from rich.table import Table

    for f in report.files:
        say(console, f"{f.reference}: {f.format} ({f.reason})" if f.reason else f"{f.reference}: format unknown")
    table = Table(show_edge=False)
    for name, justify in (
        ("file", "left"),
        ("kind", "left"),
        ("format", "left"),
        ("rows", "right"),
        ("errors", "right"),
        ("warnings", "right"),
    ):
        table.add_column(name, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for f in report.files:
        table.add_row(f.reference, f.kind, f.format, str(f.rows), str(f.errors), str(f.warnings))
    console.print(table)


def say(console: Any, text: str, style: str | None = None) -> None:
    """Print data-derived text as is: no markup (field paths hold brackets), no wrapping (keeps file:line whole)."""
    console.print(text, style=style, markup=False, highlight=False, soft_wrap=True)


def print_stats(console: Any, stats: Any, *, model: str | None) -> None:
    formats = ", ".join(f"{name} {count}" for name, count in stats.rows_by_format.items()) or "none"
    say(console, f"Rows: {stats.rows} read, {stats.valid_rows} valid ({formats})")
    if stats.conversations:
        roles = ", ".join(f"{role} {count}" for role, count in sorted(stats.messages_by_role.items()))
        say(
            console,
            f"Conversations: {stats.conversations}, {stats.turns_mean:g} messages on average, "
            f"at most {stats.turns_max} ({roles})",
        )
    tokens = stats.tokens
    if tokens is None:
        say(
            console,
            "No token statistics: pass --model NAME (e.g. --model smollm2-135m-instruct) to count tokens"
            if model is None
            else "No token statistics: no valid rows",
        )
        return
    say(
        console,
        f"Tokens ({model}): {tokens.total_tokens} in {tokens.rows} rows, {tokens.trainable_tokens} trained "
        f"({tokens.trainable_share:.1%}); per row mean {tokens.mean:g}, p50 {tokens.p50}, "
        f"p90 {tokens.p90}, p99 {tokens.p99}, max {tokens.max}",
    )
    say(
        console,
        f"Over max_length {tokens.max_length}: {tokens.rows_over_max_length} rows, "
        f"{tokens.tokens_cut} tokens would be cut ({tokens.trainable_tokens_cut} of them trained)",
    )
    if tokens.rows_missing_end_of_turn:
        say(
            console,
            f"{tokens.rows_missing_end_of_turn} rows have an assistant turn whose end-of-turn token does "
            "not train: the model may not learn to stop",
            style="yellow",
        )
    _print_histogram(console, tokens.histogram)


def _print_histogram(console: Any, bins: list[dict[str, Any]]) -> None:
    from rich.table import Table

    table = Table(show_edge=False, show_header=True)
    table.add_column("tokens", justify="right")
    table.add_column("rows", justify="right")
    table.add_column("")
    peak = max((b["rows"] for b in bins), default=0) or 1
    for b in bins:
        label = f"{b['low']}-{b['high']}" if b["high"] is not None else f"over {b['low'] - 1}"
        table.add_row(label, str(b["rows"]), "█" * round(30 * b["rows"] / peak))
    console.print(table)


def print_issues(console: Any, issues: list[Any], *, report_path: str | None = None) -> None:
    """The first issues one per line, `file:line: field: message (hint) [severity]`; how many more."""
    for issue in issues[:SHOWN_ISSUES]:
        style = "red" if issue.severity == "error" else "yellow"
        say(console, f"{issue} [{issue.severity}]", style=style)
    more = len(issues) - SHOWN_ISSUES
    if more > 0:
        where = f"in {report_path}" if report_path else "(write them all with --report FILE)"
        say(console, f"{more} more {where}")
