"""`tunesmith data check|stats|convert|split FILE...`: look at data before spending compute on it.

Each handler parses, calls one library function in `tunesmith.data`, and prints. Heavy imports
(the tokenizer for `--model`) happen inside handlers, so `tunesmith data check --help` is instant.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunesmith.cli.data_print import print_files, print_issues, print_stats, say

DEFAULT_MAX_LENGTH = 1024  # the default of template.max_length, so check sees what train would cut
# Spelled out so --help need not import the adapters; a test keeps it equal to data.options.FORMATS.
FORMAT_NAMES = "auto, messages, sharegpt, alpaca, qa, prompt_completion, text, tokens"


def register(verbs: argparse._SubParsersAction) -> None:
    data = verbs.add_parser(
        "data",
        help="check, measure, convert and split data files",
        description="Look at data files before training on them: every row checked, "
        "every problem named by file:line and field.",
    )
    commands = data.add_subparsers(dest="data_command", metavar="COMMAND", required=True)
    check = commands.add_parser(
        "check",
        help="check every row; exit 2 if the data would stop a run",
        description="Check every row of FILE(s): unreadable rows, rows that fit no format, "
        "rows that train nothing, duplicates, overlap between splits, and "
        "with --model, rows longer than --max-length.",
    )
    _add_reading(check)
    _add_model(check)
    for split in ("validation", "test"):
        check.add_argument(
            f"--{split}",
            dest=f"{split}_files",
            action="append",
            default=[],
            metavar="FILE",
            help=f"a {split} file: its rows that also appear in FILE(s), the training data, are reported (repeatable)",
        )
    check.add_argument("--report", metavar="OUT.json", help="write every issue and all statistics as JSON")
    check.add_argument(
        "--fail-on",
        choices=("error", "warning"),
        default="error",
        help="exit 2 on any error (default), or on any warning too",
    )
    check.set_defaults(handler="tunesmith.cli.data:run_check")

    stats = commands.add_parser(
        "stats",
        help="rows, formats, roles and (with --model) token statistics",
        description="Statistics of the valid rows of FILE(s).",
    )
    _add_reading(stats)
    _add_model(stats)
    stats.add_argument("--json", action="store_true", help="print the statistics as JSON")
    stats.set_defaults(handler="tunesmith.cli.data:run_stats")

    convert = commands.add_parser(
        "convert",
        help="any supported format to normalized JSONL",
        description="Write the rows of FILE(s) as normalized JSONL ({messages}, {text} or "
        "{input_ids}). With bad rows nothing is written, unless --skip-bad.",
    )
    _add_reading(convert)
    convert.add_argument("-o", "--output", required=True, metavar="OUT.jsonl", help="the file to write")
    convert.add_argument(
        "--to",
        choices=("openai", "together"),
        help="write a hosted provider's fine-tuning JSONL instead, checked against its documented rules "
        "(roles, weights, tool calls, row count, size); rows it cannot carry are named, not dropped",
    )
    _add_skip_bad(convert)
    convert.set_defaults(handler="tunesmith.cli.data:run_convert")

    split = commands.add_parser(
        "split",
        help="train/validation/test by content hash (stable as data grows)",
        description="Split FILE(s) into DIR/train.jsonl, validation.jsonl and test.jsonl. "
        "A row's split depends only on its content and --seed, so adding rows "
        "never moves old ones, and duplicates share a split (preference rows: every row of one prompt).",
    )
    _add_reading(split)
    split.add_argument("--out", required=True, metavar="DIR", help="folder for the split files")
    split.add_argument("--validation", type=float, default=0.05, help="fraction for validation (default 0.05)")
    split.add_argument("--test", type=float, default=0.05, help="fraction for test (default 0.05)")
    split.add_argument("--seed", default="", help="any text; a different seed gives a different split")
    _add_skip_bad(split)
    split.set_defaults(handler="tunesmith.cli.data:run_split")


def _add_reading(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "files",
        nargs="+",
        metavar="FILE",
        help="data file (.jsonl .json .csv .tsv .parquet), datasets folder, hf:NAME[:SPLIT] or bundled:NAME/FILE",
    )
    parser.add_argument("--format", default="auto", help=f"row format, one of {FORMAT_NAMES} (default auto)")
    parser.add_argument(
        "--column",
        dest="columns",
        action="append",
        default=[],
        metavar="KEY=NAME",
        help="your column name for a canonical key, e.g. --column instruction=task (repeatable)",
    )
    parser.add_argument(
        "--role",
        dest="roles",
        action="append",
        default=[],
        metavar="SPEAKER=ROLE",
        help="a ShareGPT speaker as a role, e.g. --role bot=assistant (repeatable)",
    )


def _add_model(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        help="count tokens with this model's tokenizer and chat template: a built-in "
        "name (smollm2-135m-instruct), a local folder or a hub id",
    )
    parser.add_argument(
        "--max-length",
        type=int,
        default=DEFAULT_MAX_LENGTH,
        help=f"longest row in tokens, as template.max_length (default {DEFAULT_MAX_LENGTH})",
    )
    parser.add_argument(
        "--train-on",
        choices=("assistant", "last", "all", "completion"),
        default="assistant",
        help="which turns train, as template.train_on (default assistant)",
    )
    parser.add_argument(
        "--template",
        default="model",
        help="chat template: the model's own (default) or a .jinja file, as template.chat_template",
    )


def _add_skip_bad(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--skip-bad",
        action="store_true",
        help="write the good rows even when some rows are bad (they are listed, exit 0)",
    )


def format_options(args: argparse.Namespace) -> Any:
    from tunesmith.data.options import FormatOptions

    return FormatOptions(
        format=args.format, columns=_pairs(args.columns, "--column"), roles=_pairs(args.roles, "--role")
    )


def _pairs(items: list[str], flag: str) -> dict[str, str]:
    from tunesmith.errors import UserError

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise UserError(f"{flag} {item}: expected KEY=VALUE")
        out[key] = value
    return out


def _check(args: argparse.Namespace, log: Callable[[str], None]) -> Any:
    from tunesmith.data.check import check_files
    from tunesmith.errors import UserError

    if args.max_length < 1:
        raise UserError(f"--max-length: expected a positive number of tokens, got {args.max_length}")
    held_out = {"validation": getattr(args, "validation_files", []), "test": getattr(args, "test_files", [])}
    splits = {}
    if any(held_out.values()):  # with held-out files named, FILE(s) are the training data
        splits = {file: "train" for file in args.files}
        splits.update({file: split for split, files in held_out.items() for file in files})
    measure = None
    if args.model:
        from tunesmith.console import quiet_libraries
        from tunesmith.formatting.measure import measure_for

        quiet_libraries()
        from tunesmith.models.load import load_tokenizer, resolve_model

        tokenizer = load_tokenizer(resolve_model(args.model, log=log))
        measure = measure_for(tokenizer, train_on=args.train_on, template=args.template)
    return check_files(
        [*args.files, *held_out["validation"], *held_out["test"]],
        options=format_options(args),
        measure=measure,
        max_length=args.max_length,
        splits=splits,
    )


def run_check(args: argparse.Namespace) -> int:
    from tunesmith.console import make_console
    from tunesmith.data.preference import PREFERENCE_FORMATS

    console = make_console()
    report = _check(args, console.print)
    print_files(console, report)
    print_stats(console, report.stats, model=args.model)
    print_issues(console, report.issues, report_path=args.report)
    if args.report:
        from tunesmith.runfolder import write_json

        Path(args.report).parent.mkdir(parents=True, exist_ok=True)
        write_json(Path(args.report), report.to_json())
    failed = report.failed(args.fail_on)
    verdict = "[red]the data would stop a run[/]" if failed else "[green]OK to train[/]"
    if not failed and any(f.format in PREFERENCE_FORMATS for f in report.files):
        verdict = (
            "[green]OK as preference data[/] (train it with train.objective: dpo, orpo, simpo or kto; "
            "tunesmith data convert --to together|openai writes it as a hosted DPO file)"
        )
    elif not failed and not args.model:
        verdict += (
            " as far as checked without --model (not checked: token counts against max_length, the "
            "chat template's render of each row, rows that train no token)"
        )
    counts = report.counts_by_severity
    console.print(
        f"{_plural(counts['error'], 'error')}, {_plural(counts['warning'], 'warning')}: {verdict}"
        + (" (--fail-on warning)" if failed and args.fail_on == "warning" else "")
    )
    return 2 if failed else 0


def run_stats(args: argparse.Namespace) -> int:
    from tunesmith.console import make_console

    console = _stderr_console() if args.json else make_console()
    report = _check(args, console.print)
    if args.json:
        print(json.dumps(report.stats.to_json(), indent=2))
        return 0
    print_stats(console, report.stats, model=args.model)
    return 0


def run_convert(args: argparse.Namespace) -> int:
    from tunesmith.console import make_console
    from tunesmith.data.convert import convert_files

    console = make_console()
    summary = convert_files(args.files, args.output, format_options(args), keep_good=args.skip_bad, to=args.to)
    for reference, fmt, reason in summary.files:
        say(console, f"{reference}: {fmt} ({reason})")
    print_issues(console, summary.bad)
    if not summary.written:
        bad = summary.rows - summary.rows_written
        reason = (
            f"{_plural(bad, 'bad row')}: nothing written (fix them, or pass --skip-bad)" if bad else "nothing written"
        )
        say(console, reason)
        return 2
    say(console, f"Wrote {summary.rows_written} of {summary.rows} rows to {summary.out_path}")
    return 0


def run_split(args: argparse.Namespace) -> int:
    from tunesmith.console import make_console
    from tunesmith.data.split import split_files

    console = make_console()
    summary = split_files(
        args.files,
        args.out,
        validation=args.validation,
        test=args.test,
        options=format_options(args),
        seed=args.seed,
        keep_good=args.skip_bad,
    )
    print_issues(console, summary.bad)
    if not summary.written:
        bad = summary.rows - sum(summary.counts.values())
        say(console, f"{_plural(bad, 'bad row')}: nothing written (fix them, or pass --skip-bad)")
        return 2
    for name, path in summary.paths.items():
        say(console, f"{path}: {summary.counts[name]} rows")
    return 0


def _plural(count: int, noun: str) -> str:
    """
    >>> _plural(1, "error"), _plural(2, "bad row")
    ('1 error', '2 bad rows')
    """
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _stderr_console() -> Any:
    from rich.console import Console

    return Console(file=sys.stderr, highlight=False)
