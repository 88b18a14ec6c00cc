"""The two kinds of failure tunesmith reports, and the exit code each maps to.

The library raises; only the CLI turns an error into an exit code (2 for the user's input, 1 for
ours). A `UserError` message is one line that names what is wrong and where (file:line, field).
"""

from __future__ import annotations


class TunesmithError(Exception):
    """Something went wrong that is not the user's input (exit code 1)."""

    exit_code = 1


class UserError(TunesmithError):
    """The user's input is wrong: a config, a data file, a model name (exit code 2).

    >>> str(UserError("config.yaml:3: train.epochs: must be > 0"))
    'config.yaml:3: train.epochs: must be > 0'
    """

    exit_code = 2


class DiskFullError(UserError):
    """The disk (or quota) filled up while writing: the user's environment, not their input, but theirs
    to fix, so exit code 2 as well. The message says what was being written, how much space is free,
    what is intact and how to go on."""
