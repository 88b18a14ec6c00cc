"""Remote runs: send the config and the files it names, start `tunesmith train` detached, watch it.

The host runs the same `tunesmith train` with the same resolved config; only the paths change: each
data file (and a local model folder or .jinja template, if the config names one) is uploaded by
content and placed under the job folder with its own file name, so errors on the host still name
the user's file, and `output_dir` becomes the host's runs folder.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml

from tunesmith.errors import TunesmithError, UserError
from tunesmith.remote.env import Wheel, build_wheel, ensure_env
from tunesmith.remote.transport import Remote, agent_source

# Environment variables passed to the remote run when set here, through a 0600 file on the host
# (never a command line): tokens the run may need, and offline switches.
FORWARD_ENV = (
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "HF_HUB_OFFLINE",
    "HF_ENDPOINT",
    "WANDB_API_KEY",
    "MLFLOW_TRACKING_URI",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
)
REMOTE_PREFIXES = ("bundled:", "hf:")


@dataclass
class Staged:
    """What a run needs on the host: the config as the host will read it and the files it names."""

    name: str
    config_yaml: str
    files: dict[str, Path] = field(default_factory=dict)  # path under the job folder -> local file


def stage_config(config_path: str | Path, overrides: list[str] | tuple[str, ...], remote_base: str) -> Staged:
    """Load and check the config here (errors name the local file:line), name the run, and rewrite
    the paths it names to where they will be on the host."""
    from tunesmith.config import load_config

    config = load_config(config_path, overrides)
    if config.name is None:
        config = config.model_copy(update={"name": f"{Path(config_path).stem}-{time.strftime('%Y%m%d-%H%M%S')}"})
    raw = config.model_dump(mode="json")
    staged = Staged(name=str(config.name), config_yaml="")
    taken: dict[str, Path] = {}

    def place(local: Path, folder: str, origin: str) -> str:
        """The path (under the job folder) that `local` will have on the host."""
        local = local.expanduser()
        if not local.exists():
            raise UserError(
                f"{origin}: {local} not found (remote runs upload the files a config names; "
                "paths are relative to the working directory)"
            )
        resolved = local.resolve()
        base = f"{folder}/{local.name or 'root'}"
        rel, n = base, 1
        while rel in taken and taken[rel] != resolved:
            rel, n = f"{folder}/{n}/{local.name}", n + 1
        taken[rel] = resolved
        if local.is_dir():
            for path in sorted(local.rglob("*")):
                if path.is_file():
                    staged.files[f"{rel}/{path.relative_to(local).as_posix()}"] = path
        else:
            staged.files[rel] = local
        return rel

    for split in ("train", "validation", "test"):
        value = raw["data"].get(split)
        if value is None:
            continue
        origin = config.origin(f"data.{split}")
        if isinstance(value, str):
            raw["data"][split] = value if value.startswith(REMOTE_PREFIXES) else place(Path(value), "data", origin)
            continue
        for i, item in enumerate(value):
            where = config.origin(f"data.{split}.{i}") if config.origin(f"data.{split}.{i}") != "config" else origin
            if isinstance(item, str):
                value[i] = item if item.startswith(REMOTE_PREFIXES) else place(Path(item), "data", where)
            elif not item["path"].startswith(REMOTE_PREFIXES):
                item["path"] = place(Path(item["path"]), "data", where)
    model_name = raw["model"]["name"]
    if Path(model_name).expanduser().is_dir():
        raw["model"]["name"] = place(Path(model_name), "model", config.origin("model.name"))
    template = raw["template"]["chat_template"]
    if template.endswith(".jinja") and Path(template).expanduser().is_file():
        raw["template"]["chat_template"] = place(Path(template), "template", config.origin("template.chat_template"))
    raw["output_dir"] = f"{remote_base}/runs"
    staged.config_yaml = yaml.safe_dump(raw, sort_keys=False, allow_unicode=True)
    return staged


def forwarded_env(extra: list[str] | tuple[str, ...] = ()) -> dict[str, str]:
    names = list(FORWARD_ENV) + [n for n in extra if n not in FORWARD_ENV]
    return {name: os.environ[name] for name in names if name in os.environ}


def prepare_env(remote: Remote, probe: dict, wheel_path: str | None, say) -> dict:
    wheel: Wheel = build_wheel(wheel_path)
    say(f"environment: tunesmith wheel {wheel.path.name} ({wheel.content[:12]})")
    answer = ensure_env(remote, wheel, probe["python"], log=_stderr_file())
    if answer.get("created"):
        say(f"environment: created {answer['env']} ({'CUDA' if answer.get('cuda') else 'CPU'} torch)")
    elif answer.get("installed"):
        say(f"environment: reused {answer['env']}, tunesmith updated")
    else:
        say(f"environment: reused {answer['env']}")
    return answer


def _stderr_file() -> IO[str] | None:
    try:
        sys.stderr.fileno()
        return sys.stderr
    except (AttributeError, OSError, ValueError):
        return None


def start_train(
    remote: Remote,
    config_path: str,
    overrides: list[str],
    *,
    wheel: str | None = None,
    nproc: int | None = None,
    forward: list[str] | tuple[str, ...] = (),
    say=print,
) -> dict[str, Any]:
    """Upload, prepare the environment, and start the run detached. Returns the start answer with `name`."""
    probe = remote.call("probe")
    staged = stage_config(config_path, overrides, probe["base"])
    say(f"run {staged.name!r} on {remote.ssh.host} (python {probe['python']}, base {probe['base']})")
    hashes = remote.upload(list(staged.files.values()), progress=lambda text: say(f"upload: {text}"))
    env = prepare_env(remote, probe, wheel, say)
    remote.call(
        "stage",
        name=staged.name,
        config_yaml=staged.config_yaml,
        files=[{"path": rel, "sha": hashes[path]} for rel, path in staged.files.items()],
    )
    argv = [env["python"], "-m", "tunesmith", "train", "config.yaml"]
    if nproc:
        argv += ["--nproc", str(nproc)]
    started = remote.call("start", name=staged.name, argv=argv, env=forwarded_env(forward), agent=agent_source())
    return {**started, "name": staged.name, "env": env}


def resume_train(
    remote: Remote, name: str, *, wheel: str | None = None, forward: list[str] | tuple[str, ...] = (), say=print
) -> dict[str, Any]:
    """Continue a stopped (or, after a reboot, lost) run from its newest complete checkpoint."""
    probe = remote.call("probe")
    state = remote.call("status", name=name)
    if state["state"] == "unknown":
        raise UserError(f"{remote.ssh.host}: no run {name!r} to resume under {probe['base']}")
    if state["state"] == "running":
        raise UserError(f"{remote.ssh.host}: run {name!r} is still running (pid {state['pid']})")
    if state["state"] == "completed":
        raise UserError(f"{remote.ssh.host}: run {name!r} already completed; nothing to resume")
    env = prepare_env(remote, probe, wheel, say)
    argv = [env["python"], "-m", "tunesmith", "train", state["run_dir"], "--resume"]
    say(
        f"resuming {name!r} on {remote.ssh.host} (state was {state['state']}, checkpoints: "
        f"{', '.join(state.get('checkpoints') or []) or 'none'})"
    )
    started = remote.call("start", name=name, argv=argv, env=forwarded_env(forward), agent=agent_source())
    return {**started, "name": name, "env": env}


EXIT_CODES = {"completed": 0, "stopped": 143}


def follow(remote: Remote, name: str, *, out: IO[bytes] | None = None, follow: bool = True, offset: int = 0) -> dict:
    """Copy the run's log to `out` (until the run ends, with `follow`); then return its status.
    Ctrl-C (KeyboardInterrupt) stops the copying only; the run on the host goes on."""
    sink = out if out is not None else sys.stdout.buffer
    process = remote.open_stream("logs", name=name, follow=follow, offset=offset)
    assert process.stdout is not None
    head = process.stdout.read(4)
    if head != b"LOG\n":  # a refusal ({"error": ...}) or a failed connection instead of the log
        remote.finish(process, head + process.stdout.read())
        raise TunesmithError(f"{remote.ssh.host}: no log came back")
    tail = b""
    try:
        while True:
            block = process.stdout.read1(65536) if hasattr(process.stdout, "read1") else process.stdout.read(4096)
            if not block:
                break
            tail = (tail + block)[-4096:]
            sink.write(block)
            sink.flush()
    except BaseException:
        process.kill()
        process.wait()
        raise
    remote.finish(process, tail)
    return remote.call("status", name=name)


def exit_code(state: dict) -> int:
    """The local exit code for a finished remote run: its own where it ended, 1 when it was lost."""
    if state["state"] in EXIT_CODES:
        return EXIT_CODES[state["state"]]
    code = state.get("exit_code")
    return code if code in (1, 2) else 1


def describe(state: dict) -> str:
    parts = [f"{state['name']}: {state['state']}"]
    if state.get("exit_code") is not None:
        parts.append(f"exit code {state['exit_code']}")
    if state.get("manifest_status"):
        parts.append(f"manifest: {state['manifest_status']}")
    metrics = state.get("last_metrics") or {}
    if "step" in metrics:
        loss = metrics.get("loss", metrics.get("eval_loss"))
        parts.append(f"step {metrics['step']}" + (f", loss {loss:.4f}" if isinstance(loss, (int, float)) else ""))
    if state.get("checkpoints"):
        parts.append(f"checkpoints: {', '.join(state['checkpoints'])}")
    if state.get("pid") and state["state"] == "running":
        parts.append(f"pid {state['pid']}")
    return "; ".join(parts)
