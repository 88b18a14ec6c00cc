"""Host strings and ssh argv: parsed strictly, refused when they could be options, quoted exactly."""

from __future__ import annotations

import shlex
import subprocess

import pytest

from tunesmith.errors import UserError
from tunesmith.remote.host import BASE_OPTIONS, Host, SshSettings, parse_host

HOSTILE = [
    "a b'c\"$(touch SENTINEL);d.jsonl",
    "x; touch SENTINEL",
    "`touch SENTINEL`",
    "$HOME",
    "*",
    "-rf",
    "new\nline",
    "tab\there",
    "back\\slash",
    "",
    "'",
    '"',
    "é ü 中文",
]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("gpu", Host(None, "gpu", None)),
        ("alice@gpu-1", Host("alice", "gpu-1", None)),
        ("alice@gpu-1.example.org:2222", Host("alice", "gpu-1.example.org", 2222)),
        ("root@127.0.0.1:22", Host("root", "127.0.0.1", 22)),
        ("bob@[::1]:2200", Host("bob", "::1", 2200)),
        ("fe80::1", Host(None, "fe80::1", None)),
        ("my_alias", Host(None, "my_alias", None)),
    ],
)
def test_parse_host(text, expected):
    assert parse_host(text) == expected


@pytest.mark.parametrize(
    "text, reason",
    [
        ("-oProxyCommand=touch SENTINEL", "must not start with '-'"),
        ("-p22", "must not start with '-'"),
        ("alice@-oProxyCommand=x", "not a host name"),
        ("-alice@host", "must not start with '-'"),
        ("alice@host -oProxyCommand=x", "whitespace"),
        ("alice@host\n", "whitespace"),
        ("alice@ho\x00st", "control"),
        ("a;b@host", "not a valid user name"),
        ("alice@host;touch", "not a host name"),
        ("alice@$(touch)", "not a host name"),
        ("alice@`id`", "not a host name"),
        ("alice@host:0", "port"),
        ("alice@host:70000", "port"),
        ("alice@host:22x", "port"),
        ("alice@", "not a host name"),
        ("", "empty"),
        ("[::1", "expected [address]:port"),
    ],
)
def test_refused_hosts(text, reason):
    with pytest.raises(UserError, match=reason.replace("[", r"\[").replace("$", r"\$")):
        parse_host(text)


def test_ssh_argv_shape():
    settings = SshSettings(parse_host("alice@gpu:2222"))
    argv = settings.ssh_argv(["python3", "-c", "print(1)"])
    assert argv[0] == "ssh"
    assert argv[1:5] == list(BASE_OPTIONS)
    assert "StrictHostKeyChecking=yes" in argv and "BatchMode=yes" in argv
    assert argv[argv.index("-p") + 1] == "2222"
    assert argv[-3:] == ["--", "alice@gpu", "python3 -c 'print(1)'"]
    assert settings.ssh_argv(["true"])[-2] == "alice@gpu"  # the destination always follows "--"


def test_ssh_config_from_environment(tmp_path, monkeypatch):
    config = tmp_path / "ssh config"
    config.write_text("Host *\n")
    monkeypatch.setenv("TUNESMITH_SSH_CONFIG", str(config))
    argv = SshSettings.create("h").ssh_argv(["true"])
    assert argv[argv.index("-F") + 1] == str(config)
    monkeypatch.setenv("TUNESMITH_SSH_CONFIG", str(tmp_path / "missing"))
    with pytest.raises(UserError, match="ssh config file not found"):
        SshSettings.create("h")


def test_remote_command_reaches_a_posix_shell_byte_for_byte(tmp_path):
    """What ssh hands the remote login shell is `shlex.join(argv)`: a shell reads back exactly argv
    and runs nothing that is inside it."""
    command = SshSettings(parse_host("h")).ssh_argv(["printf", "%s\\0", *HOSTILE])[-1]
    done = subprocess.run(["sh", "-c", command], capture_output=True, cwd=tmp_path, check=True)
    assert done.stdout.split(b"\0")[:-1] == [s.encode() for s in HOSTILE]
    assert not (tmp_path / "SENTINEL").exists()
    assert shlex.split(command) == ["printf", "%s\\0", *HOSTILE]
