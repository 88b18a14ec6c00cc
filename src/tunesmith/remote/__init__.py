"""Train on a remote GPU host over SSH, from a laptop.

Only the system OpenSSH client carries anything (so ~/.ssh/config, the agent, keys and ProxyJump
work as the user set them up); on the host a small stdlib-only helper (`agent.py`, sent with each
command) stores uploaded files by sha256, prepares a virtualenv, and starts, watches, stops and
packs `tunesmith train` runs. User strings (file names, run names) travel as JSON on stdin, never
on a command line.
"""

from tunesmith.remote.host import Host, SshSettings, parse_host

__all__ = ["Host", "SshSettings", "parse_host"]
