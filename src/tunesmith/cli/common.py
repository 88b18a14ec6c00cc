"""What every verb shares: the console, quiet third-party logging, offline-friendly defaults."""

from __future__ import annotations

import argparse
from typing import Any


def add_set_option(parser: argparse.ArgumentParser) -> None:
    """`--set KEY=VALUE` (repeatable): override one config value from the command line."""
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.epochs=2 (repeatable)")


def make_console() -> Any:
    """The one console the library prints through."""
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)  # long paths stay whole, copyable


def quiet_libraries() -> None:
    """Keep transformers' own progress bars and deprecation chatter out of our output."""
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|peft)(\.|$)")
