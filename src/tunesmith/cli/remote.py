"""`tunesmith remote check|train|status|logs|fetch|cancel --host user@host[:port]`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tunesmith.cli.common import add_set_option


def register(verbs: argparse._SubParsersAction) -> None:
    remote = verbs.add_parser(
        "remote",
        help="train on a GPU host over SSH",
        description="Run training on another machine through your own ssh "
        "(~/.ssh/config, agent, keys and ProxyJump apply; unknown host keys are refused).",
    )
    sub = remote.add_subparsers(dest="remote_verb", metavar="ACTION", required=True)

    check = sub.add_parser("check", help="is the host ready: python, disk, GPUs, memory for the config")
    check.add_argument("config", nargs="?", help="config to size against the host's free GPU memory")
    add_set_option(check)
    _common(check)
    check.set_defaults(handler="tunesmith.cli.remote:run_check")

    train = sub.add_parser(
        "train",
        help="upload config and data, start the run detached, follow it",
        description="Upload CONFIG and the files it names (unchanged files are not sent again), "
        "prepare a virtualenv on the host (reused later), start `tunesmith train` "
        "detached and follow its log. Ctrl-C stops following, not the run. "
        "With --resume, CONFIG is the run's name on the host.",
    )
    train.add_argument("config", help="YAML config file (with --resume: the run name, or the config with its name)")
    add_set_option(train)
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue the run from its newest complete checkpoint (after a cancel or a reboot)",
    )
    train.add_argument("--no-follow", action="store_true", help="start it and return")
    train.add_argument("--nproc", type=int, metavar="N", help="processes on the host (one per GPU)")
    train.add_argument("--wheel", metavar="PATH", help="install this tunesmith wheel instead of building one")
    train.add_argument(
        "--forward-env",
        action="append",
        default=[],
        metavar="NAME",
        help="also pass this environment variable to the run (through a 0600 file on the host); "
        "HF_TOKEN, WANDB_API_KEY, MLFLOW_TRACKING_* and HF_HUB_OFFLINE are passed when set",
    )
    _common(train)
    train.set_defaults(handler="tunesmith.cli.remote:run_train")

    status = sub.add_parser("status", help="state of a run on the host")
    status.add_argument("run", help="run name")
    status.add_argument("--json", action="store_true", help="print the state as JSON")
    _common(status)
    status.set_defaults(handler="tunesmith.cli.remote:run_status")

    logs = sub.add_parser("logs", help="print a run's log (-f: follow it)")
    logs.add_argument("run", help="run name")
    logs.add_argument(
        "-f", "--follow", action="store_true", help="keep printing until the run ends (Ctrl-C stops watching)"
    )
    _common(logs)
    logs.set_defaults(handler="tunesmith.cli.remote:run_logs")

    fetch = sub.add_parser("fetch", help="bring the run folder back (adapter, metrics, report)")
    fetch.add_argument("run", help="run name")
    fetch.add_argument("--out", default="runs", help="local folder to put it in (default: runs)")
    fetch.add_argument("--checkpoints", action="store_true", help="include checkpoints/ (large)")
    _common(fetch)
    fetch.set_defaults(handler="tunesmith.cli.remote:run_fetch")

    cancel = sub.add_parser("cancel", help="stop a run with SIGTERM (it writes a checkpoint; --resume continues)")
    cancel.add_argument("run", help="run name")
    cancel.add_argument("--wait", action="store_true", help="wait until it has stopped")
    _common(cancel)
    cancel.set_defaults(handler="tunesmith.cli.remote:run_cancel")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", required=True, metavar="USER@HOST[:PORT]", help="the host, as ssh takes it")
    parser.add_argument(
        "--ssh-config",
        metavar="FILE",
        help="ssh config file to use instead of ~/.ssh/config (default: $TUNESMITH_SSH_CONFIG)",
    )
    parser.add_argument(
        "--remote-dir", metavar="DIR", help="tunesmith's folder on the host (default ~/.tunesmith-remote)"
    )
    parser.add_argument(
        "--remote-python", default="python3", metavar="PYTHON", help="Python on the host (default python3)"
    )


def _remote(args: argparse.Namespace):
    from tunesmith.remote.host import SshSettings
    from tunesmith.remote.transport import Remote

    return Remote(SshSettings.create(args.host, args.ssh_config), args.remote_dir, args.remote_python)


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run_check(args: argparse.Namespace) -> int:
    from tunesmith.remote.check import check_host

    report = check_host(_remote(args), args.config, args.overrides)
    marks = {"ok": "ok  ", "warn": "warn", "fail": "FAIL"}
    for status, item, detail in report.lines:
        print(f"{marks[status]}  {item:<8} {detail}")
    return 0 if report.ok else 1


def run_train(args: argparse.Namespace) -> int:
    from tunesmith.remote import jobs

    remote = _remote(args)
    if args.resume:
        name = args.config
        if name.endswith((".yaml", ".yml")) and Path(name).is_file():  # the config it was started with
            from tunesmith.config import load_config
            from tunesmith.errors import UserError

            name = load_config(name, args.overrides).name
            if name is None:
                raise UserError(f"{args.config} names no run: pass the run name, or --set name=NAME")
        elif args.overrides:
            _say("note: --set is ignored with --resume (the run continues with its own config)")
        started = jobs.resume_train(remote, name, wheel=args.wheel, forward=args.forward_env, say=_say)
    else:
        started = jobs.start_train(
            remote, args.config, args.overrides, wheel=args.wheel, nproc=args.nproc, forward=args.forward_env, say=_say
        )
    name = started["name"]
    hint = _hint(args, name)
    _say(f"started {name!r} on {remote.ssh.host} (pid {started['pid']}); it keeps running without this connection.")
    if args.no_follow:
        _say(f"follow it: tunesmith remote logs -f {hint}")
        return 0
    return _follow(remote, name, hint)


def _follow(remote, name: str, hint: str) -> int:
    from tunesmith.remote import jobs

    try:
        state = jobs.follow(remote, name)
    except KeyboardInterrupt:
        _say(
            f"\nstopped following; the run goes on. Again: tunesmith remote logs -f {hint}; "
            f"stop it: tunesmith remote cancel {hint}"
        )
        return 130
    _say(jobs.describe(state))
    if state["state"] in ("completed", "stopped"):
        _say(f"bring it back: tunesmith remote fetch {hint}")
    return jobs.exit_code(state)


def _hint(args: argparse.Namespace, name: str) -> str:
    import shlex

    words = [name, "--host", args.host]
    if args.ssh_config:
        words += ["--ssh-config", args.ssh_config]
    if args.remote_dir:
        words += ["--remote-dir", args.remote_dir]
    return shlex.join(words)


def run_status(args: argparse.Namespace) -> int:
    import json

    from tunesmith.errors import UserError
    from tunesmith.remote import jobs

    state = _remote(args).call("status", name=args.run)
    if state["state"] == "unknown":
        raise UserError(f"{args.host}: no run {args.run!r} on this host")
    print(json.dumps(state, indent=2) if args.json else jobs.describe(state))
    return 0


def run_logs(args: argparse.Namespace) -> int:
    from tunesmith.remote import jobs

    remote = _remote(args)
    if args.follow:
        return _follow(remote, args.run, _hint(args, args.run))
    jobs.follow(remote, args.run, follow=False)
    return 0


def run_fetch(args: argparse.Namespace) -> int:
    from pathlib import Path

    remote = _remote(args)
    folder = remote.fetch(args.run, Path(args.out), checkpoints=args.checkpoints)
    print(f"Fetched: {folder}  (log: {folder.parent / (args.run + '.remote.log')})")
    return 0


def run_cancel(args: argparse.Namespace) -> int:
    import time

    from tunesmith.remote import jobs

    remote = _remote(args)
    answer = remote.call("cancel", name=args.run)
    if not answer.get("signalled"):
        print(f"not running: {jobs.describe(answer['state'])}")
        return 0
    print(
        f"sent SIGTERM to {args.run!r} (pid {answer['pid']}): it finishes the current step, writes a checkpoint "
        f"and stops. Continue later: tunesmith remote train {_hint(args, args.run)} --resume"
    )
    if args.wait:
        while (state := remote.call("status", name=args.run))["state"] == "running":
            time.sleep(1)
        print(jobs.describe(state))
    return 0
