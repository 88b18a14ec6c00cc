"""Where tunesmith keeps its cache: the one place that decides it.

`$TUNESMITH_CACHE` when set (used as it is), else `$XDG_CACHE_HOME/tunesmith` when XDG_CACHE_HOME
is an absolute path (the XDG Base Directory spec says to ignore a relative one), else
`~/.cache/tunesmith`. Under it: `models/` (converted embedded models, models/embedded.py), `data/`
(processed data, formatting/cache.py) and `remote/` (wheels built for remote hosts, remote/env.py);
`tunesmith doctor` reports the free disk space of this folder.

Imports nothing beyond the standard library: the CLI and the remote agent can use it freely.
"""

from __future__ import annotations

import os
from pathlib import Path

APP = "tunesmith"


def cache_root(environ: os._Environ[str] | dict[str, str] | None = None) -> Path:
    """The tunesmith cache folder (it may not exist yet).

    >>> str(cache_root({"TUNESMITH_CACHE": "/data/ts", "XDG_CACHE_HOME": "/xdg"}))
    '/data/ts'
    >>> str(cache_root({"XDG_CACHE_HOME": "/xdg", "HOME": "/home/me"}))
    '/xdg/tunesmith'
    >>> str(cache_root({"XDG_CACHE_HOME": "relative/cache", "HOME": "/home/me"}))
    '/home/me/.cache/tunesmith'
    """
    env = os.environ if environ is None else environ
    own = env.get("TUNESMITH_CACHE", "").strip()
    if own:
        return Path(own).expanduser()
    xdg = env.get("XDG_CACHE_HOME", "").strip()
    if xdg and Path(xdg).expanduser().is_absolute():
        return Path(xdg).expanduser() / APP
    home = env.get("HOME", "").strip()
    return (Path(home) if home else Path.home()) / ".cache" / APP
