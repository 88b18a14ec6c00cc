"""The console the library prints through, and the libraries' own chatter kept out of it.

The library owns this; the CLI only parses arguments and hands the console on. Workers started by
torchrun and the planner's measuring subprocess make their own with the same settings.
"""

from __future__ import annotations

from typing import Any


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
