"""What every verb shares: the console, quiet third-party logging, offline-friendly defaults."""

from __future__ import annotations

import argparse


def add_set_option(parser: argparse.ArgumentParser) -> None:
    """`--set KEY=VALUE` (repeatable): override one config value from the command line."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.epochs=2 (repeatable)",
    )


SNIFF_ROWS = 5  # rows read to name a data file's format
COUNT_CAP = 10_000  # rows counted before saying "at least"
_CONFIG_SUFFIXES = (".yaml", ".yml")


def data_file_summary(path: str) -> str | None:
    """What `path` is if it is a data file rather than a config: "12 rows of format messages: key messages".

    None when it is not one: a .yaml file, a run folder, a missing file, or a .json file whose rows fit
    no data format (a config written as JSON). Reads at most `COUNT_CAP` rows, so a huge file costs a
    fraction of a second.
    """
    from itertools import islice

    from tunesmith.data.formats import detect_format
    from tunesmith.data.options import FormatOptions
    from tunesmith.data.sources import open_source
    from tunesmith.data.types import RowError
    from tunesmith.errors import UserError

    if path.lower().endswith(_CONFIG_SUFFIXES):
        return None
    try:
        source = open_source(path)
        rows = list(islice(source.rows(), COUNT_CAP + 1))
    except (UserError, OSError):
        return None
    found = None
    for row in rows[:SNIFF_ROWS]:
        if row.data is None:
            continue
        try:
            found = detect_format(row.data, row.where, FormatOptions())
            break
        except RowError:
            continue
    if found is None and source.kind == "json":
        return None  # JSON is YAML too: a config written as JSON (a .jsonl, .csv or .parquet never is one)
    count = f"at least {COUNT_CAP:,} rows" if len(rows) > COUNT_CAP else f"{len(rows):,} row{'s' * (len(rows) != 1)}"
    return f"{count} of format {found[0]}: {found[1]}" if found else f"{count} in no format tunesmith reads"


def refuse_data_file_as_config(path: str) -> None:
    """Raise a `UserError` saying what to do when a data file is passed where a config is expected."""
    from tunesmith.errors import UserError

    summary = data_file_summary(path)
    if summary is not None:
        raise UserError(
            f"{path} looks like a data file ({summary}), not a config; pass a YAML config, or train "
            f"on it directly: tunesmith train --data {path} --model NAME"
        )
