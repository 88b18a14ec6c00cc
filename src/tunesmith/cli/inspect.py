"""`tunesmith inspect CONFIG`: which tokens will train, before any compute is spent.

Parses, loads the config, and calls `tunesmith.training.inspect.inspect`; heavy imports happen in
the handler, so `tunesmith inspect --help` is instant.
"""

from __future__ import annotations

import argparse

from tunesmith.cli.common import add_set_option

DEFAULT_ROWS = 3


def register(verbs: argparse._SubParsersAction) -> None:
    inspect = verbs.add_parser(
        "inspect",
        help="rendered rows with trained tokens highlighted, and the data audit",
        description="Show the first rows of a split exactly as training will see them: the chat template "
        "rendered, trained tokens highlighted (assistant answers and their end-of-turn token, by "
        "default), token counts, and the split's audit. Loads no model weights.",
    )
    inspect.add_argument("config", help="YAML config file")
    inspect.add_argument(
        "--rows",
        type=int,
        default=DEFAULT_ROWS,
        metavar="N",
        help=f"how many rows to show (default {DEFAULT_ROWS}); the audit covers every row",
    )
    inspect.add_argument(
        "--split", choices=("train", "validation"), default="train", help="which split to show (default train)"
    )
    inspect.add_argument(
        "--html", metavar="OUT.html", help="also write the rows and the audit as a self-contained HTML page"
    )
    inspect.add_argument(
        "--json",
        metavar="OUT.jsonl",
        help="also write the first rows as JSON lines, one per training sequence: source, "
        "input_ids, labels, text, trained (each trained span's text), prompts (each "
        "turn's generation prompt)",
    )
    add_set_option(inspect)
    inspect.set_defaults(handler="tunesmith.cli.inspect:run_inspect")


def run_inspect(args: argparse.Namespace) -> int:
    from tunesmith.cli.common import refuse_data_file_as_config
    from tunesmith.config import load_config
    from tunesmith.console import make_console, quiet_libraries

    refuse_data_file_as_config(args.config)
    config = load_config(args.config, args.overrides)
    quiet_libraries()
    from tunesmith.training.inspect import inspect

    inspect(config, rows=args.rows, split=args.split, console=make_console(), html_path=args.html, json_path=args.json)
    return 0
