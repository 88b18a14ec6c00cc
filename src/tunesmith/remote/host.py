"""`user@host[:port]`: parsed, refused when it could be read as an option, turned into ssh argv.

>>> parse_host("alice@gpu-1:2222")
Host(user='alice', hostname='gpu-1', port=2222)
>>> parse_host("[::1]:22").hostname
'::1'
"""

from __future__ import annotations

import os
import re
import shlex
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tunesmith.errors import UserError

SSH_CONFIG_ENV = "TUNESMITH_SSH_CONFIG"

# The options every connection gets. BatchMode: never prompt (a prompt would hang a detached run's
# watcher); StrictHostKeyChecking=yes: an unknown or changed host key is refused, never learned.
BASE_OPTIONS = ("-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes")

_USER = re.compile(r"^[A-Za-z0-9._][A-Za-z0-9._-]*$")
_HOSTNAME = re.compile(r"^[A-Za-z0-9_.%:-]+$")


@dataclass(frozen=True)
class Host:
    user: str | None
    hostname: str
    port: int | None = None

    @property
    def destination(self) -> str:
        """What ssh gets as its destination argument (always after `--`)."""
        return f"{self.user}@{self.hostname}" if self.user else self.hostname

    def __str__(self) -> str:
        host = f"[{self.hostname}]" if ":" in self.hostname else self.hostname
        where = f"{self.user}@{host}" if self.user else host
        return f"{where}:{self.port}" if self.port else where


def parse_host(text: str) -> Host:
    """Parse `[user@]host[:port]` (`[v6-address]:port` for IPv6), refusing anything ssh could take
    for an option or that a shell could split.

    >>> parse_host("-oProxyCommand=touch x")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    tunesmith.errors.UserError: --host '-oProxyCommand=touch x': must not start with '-' (ssh would read it as an ...)
    """
    where = f"--host {text!r}"
    if not text:
        raise UserError(f"{where}: empty; expected user@host[:port]")
    if text.startswith("-"):
        raise UserError(f"{where}: must not start with '-' (ssh would read it as an option)")
    if any(ch.isspace() or unicodedata.category(ch).startswith("C") for ch in text):
        raise UserError(f"{where}: contains whitespace or control characters")
    user, at, rest = text.rpartition("@")
    if at:
        if not _USER.match(user):
            raise UserError(f"{where}: user {user!r} is not a valid user name")
    else:
        user, rest = "", text
    port: int | None = None
    if rest.startswith("["):
        hostname, bracket, tail = rest[1:].partition("]")
        if not bracket or (tail and not tail.startswith(":")):
            raise UserError(f"{where}: expected [address]:port")
        port_text = tail[1:] if tail else None
    elif rest.count(":") == 1:
        hostname, _, port_text = rest.partition(":")
    else:
        hostname, port_text = rest, None  # a bare IPv6 address has several colons and no port
    if port_text is not None:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise UserError(f"{where}: port {port_text!r} must be a number from 1 to 65535")
        port = int(port_text)
    if not hostname or hostname.startswith("-") or not _HOSTNAME.match(hostname):
        raise UserError(f"{where}: {hostname!r} is not a host name or address")
    return Host(user or None, hostname, port)


@dataclass(frozen=True)
class SshSettings:
    """How to reach one host: the parsed host plus an optional ssh config file (`-F`)."""

    host: Host
    config_file: Path | None = None
    extra_options: tuple[str, ...] = field(default=())

    @classmethod
    def create(cls, host: str | Host, config_file: str | os.PathLike | None = None) -> SshSettings:
        parsed = host if isinstance(host, Host) else parse_host(host)
        chosen = config_file if config_file is not None else os.environ.get(SSH_CONFIG_ENV) or None
        path = Path(chosen).expanduser() if chosen else None
        if path is not None and not path.is_file():
            raise UserError(f"ssh config file not found: {path}")
        return cls(parsed, path)

    def options(self) -> list[str]:
        argv = [*BASE_OPTIONS, *self.extra_options]
        if self.config_file is not None:
            argv += ["-F", str(self.config_file)]
        if self.host.port is not None:
            argv += ["-p", str(self.host.port)]
        return argv

    def ssh_argv(self, remote_argv: Sequence[str]) -> list[str]:
        """`ssh OPTIONS -- DEST 'one shell-quoted command'`: the remote shell gets exactly `remote_argv`.

        >>> s = SshSettings(parse_host("me@h:2200"))
        >>> s.ssh_argv(["echo", "a b; touch x"])[-3:]
        ['--', 'me@h', "echo 'a b; touch x'"]
        """
        if not remote_argv:
            raise ValueError("empty remote command")
        return ["ssh", *self.options(), "--", self.host.destination, shlex.join(list(remote_argv))]

    def resolved(self) -> tuple[str, int]:
        """The real host name and port ssh would connect to (after ~/.ssh/config aliases), via `ssh -G`."""
        import subprocess

        argv = ["ssh", "-G", *self.options(), "--", self.host.destination]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return self.host.hostname, self.host.port or 22
        values = dict(line.split(" ", 1) for line in done.stdout.splitlines() if " " in line)
        port = values.get("port", str(self.host.port or 22))
        return values.get("hostname", self.host.hostname), int(port) if port.isdigit() else 22
