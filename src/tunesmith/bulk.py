"""Building large acyclic data (100k examples, millions of token ids) without the cyclic GC.

CPython's collector runs after every few hundred container allocations and its oldest generation
visits every element of every live list: with millions of token ids in lists, each full pass
costs a large share of a second and building 100k examples triggers many. Nothing built here is
cyclic, so the collector is paused for the duration and resumed (as it was) afterwards; measured
on the processed-data cache's load of 100k examples: 3.7 s with the collector, 1.1 s without.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def paused_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector inside the block (nested uses are fine).

    >>> with paused_gc():
    ...     gc.isenabled()
    False
    """
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()
