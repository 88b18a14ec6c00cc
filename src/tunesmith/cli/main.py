"""`tunesmith` entry point: `main(argv) -> exit code`.

Verb modules register their parsers here without importing torch; a verb's handler (and the
heavy libraries it needs) is imported only when that verb runs, so `--help` is instant.
Exit codes: 0 done, 2 the user's input is wrong, 1 our fault, 130 interrupted (Ctrl-C), 143 stopped by
SIGTERM after writing a checkpoint (`tunesmith train RUN_DIR --resume` continues).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from tunesmith import __version__
from tunesmith.errors import TunesmithError, UserError

VERB_MODULES = (
    "tunesmith.cli.train",
    "tunesmith.cli.evaluate",
    "tunesmith.cli.data",
    "tunesmith.cli.inspect",
    "tunesmith.cli.export",
    "tunesmith.cli.remote",
    "tunesmith.cli.cloud",
    "tunesmith.cli.plan",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tunesmith", description="Fine-tune language models: data file in, model you can run out."
    )
    parser.add_argument("--version", action="version", version=f"tunesmith {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for name in VERB_MODULES:
        importlib.import_module(name).register(verbs)
    return parser


# Libraries whose import-time warnings go to stderr through logging's last-resort handler when nothing is
# configured: bitsandbytes 0.4x logs "Failed to load CPU gemm_4bit_forward ..." on every import on CPUs with
# AVX-512 BF16 (peft imports it whenever it is installed), which turned each one-line error into two.
# Their errors still show; their warnings are not the user's business.
CHATTY_LOGGERS = ("bitsandbytes",)


def keep_library_chatter_off_stderr() -> None:
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    keep_library_chatter_off_stderr()
    parser = build_parser()
    args = parser.parse_args(argv)
    module_name, _, function_name = args.handler.partition(":")
    try:
        handler = getattr(importlib.import_module(module_name), function_name)
        return int(handler(args) or 0)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except TunesmithError as err:
        print(f"tunesmith failed: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def run() -> None:
    """Console-script entry point."""
    raise SystemExit(main())


if __name__ == "__main__":
    run()
