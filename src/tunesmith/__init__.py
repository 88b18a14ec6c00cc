"""tunesmith: from a dataset file to a fine-tuned model you can run.

Importing this package imports no torch; heavy libraries load inside the functions that use them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:  # pragma: no cover
    from tunesmith.pipeline import RunResult

__all__ = ["__version__", "train", "RunResult"]


def train(config: Any, *, console: Any = None, resume: bool = False) -> RunResult:
    """Run one fine-tuning job described by `config` (a `Config` or a YAML path); `resume=True`
    continues its run folder (or the run folder `config` is) from the newest complete checkpoint."""
    from tunesmith.pipeline import train as _train

    return _train(config, console=console, resume=resume)


def __getattr__(name: str) -> Any:
    if name == "RunResult":
        from tunesmith.pipeline import RunResult

        return RunResult
    raise AttributeError(name)
