"""Row work spread over forked worker processes: the one design `data check --model` and the
training data's encoding share.

Rows are independent, and rendering and tokenizing are most of the time, so the work splits across
CPUs. Workers are forked: they inherit what they need (tokenizer, template, the rows themselves)
through `initializer(*initargs)` run in the child, so nothing is pickled on the way in and only
results come back. Without fork (Windows; macOS, where fork is unsafe) or with one CPU there is no
pool and the caller works in its own process. A worker that dies raises `BrokenProcessPool` in the
parent rather than hanging it. Ctrl-C is the parent's to handle: workers ignore SIGINT.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from typing import Any

MAX_WORKERS = 8


def default_workers() -> int:
    """The CPUs this process may use, at most `MAX_WORKERS`."""
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        available = os.cpu_count() or 1
    return max(1, min(MAX_WORKERS, available))


def fork_pool(workers: int, initializer: Callable[..., None], initargs: tuple[Any, ...] = ()) -> Any:
    """A `ProcessPoolExecutor` of `workers` forked processes, each running `initializer(*initargs)`
    first; None where forking is not worth it or not safe (one worker, not Linux)."""
    if workers < 2 or sys.platform != "linux":
        return None
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("fork"),
        initializer=_start,
        initargs=(initializer, initargs),
    )


def _start(initializer: Callable[..., None], initargs: tuple[Any, ...]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # workers would only print tracebacks
    # each worker is one of the processes sharing the CPUs: a fast tokenizer's own threads on top
    # only contend (2-piece batches took 1.3x as long with them on 2 cores)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    initializer(*initargs)
