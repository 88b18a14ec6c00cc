"""What every verb shares: the console, quiet third-party logging, offline-friendly defaults."""

from __future__ import annotations

from typing import Any


def make_console() -> Any:
    """The one console the library prints through."""
    from rich.console import Console

    return Console(highlight=False)


def quiet_libraries() -> None:
    """Keep transformers' own progress bars and deprecation chatter out of our output."""
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|peft)(\.|$)")
