"""`tunesmith remote check`: can this host run the config? Reachable, Python, disk, GPUs, memory."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tunesmith.remote.transport import Remote

MIN_PYTHON = (3, 10)
MIN_FREE_DISK = 10 * 1024**3  # torch, dependencies, the model and a few checkpoints


@dataclass
class CheckReport:
    host: str
    probe: dict[str, Any]
    lines: list[tuple[str, str, str]] = field(default_factory=list)  # (status ok|warn|fail, item, detail)

    @property
    def ok(self) -> bool:
        return all(status != "fail" for status, _, _ in self.lines)


def check_host(
    remote: Remote, config_path: str | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> CheckReport:
    probe = remote.call("probe")  # reachability (and the host key) is checked by this very connection
    report = CheckReport(str(remote.ssh.host), probe)
    add = report.lines.append
    add(("ok", "ssh", f"reached {remote.ssh.host}; remote folder {probe['base']}"))
    version = tuple(int(p) for p in probe["python"].split(".")[:2])
    add(
        (
            "ok" if version >= MIN_PYTHON else "fail",
            "python",
            f"{probe['python']} ({probe['executable']})"
            + ("" if version >= MIN_PYTHON else f"; tunesmith needs {'.'.join(map(str, MIN_PYTHON))}+"),
        )
    )
    free = probe["free_disk_bytes"]
    add(
        (
            "ok" if free >= MIN_FREE_DISK else "warn",
            "disk",
            f"{free / 1024**3:.1f} GiB free"
            + (
                ""
                if free >= MIN_FREE_DISK
                else f" (less than {MIN_FREE_DISK / 1024**3:.0f} GiB: torch and checkpoints may not fit)"
            ),
        )
    )
    gpus = probe["gpus"]
    if gpus:
        add(("ok", "driver", f"NVIDIA driver {probe['driver']}"))
        for gpu in gpus:
            add(
                (
                    "ok",
                    f"gpu {gpu['index']}",
                    f"{gpu['name']}: {gpu['free_mib'] / 1024:.1f} of {gpu['total_mib'] / 1024:.1f} GiB free",
                )
            )
    elif probe.get("nvidia_smi"):
        add(("warn", "gpu", f"nvidia-smi is there but failed: {probe.get('nvidia_smi_error') or 'no GPUs listed'}"))
    else:
        add(("warn", "gpu", "no nvidia-smi: no CUDA GPU; training would run on the CPU"))
    if config_path is not None:
        add(memory_line(config_path, overrides, gpus))
    return report


def memory_line(config_path: str, overrides: list[str] | tuple[str, ...], gpus: list[dict]) -> tuple[str, str, str]:
    """Free GPU memory against the memory planner's estimate for the config (computed here: no weights
    are loaded, the data goes through the real tokenizer)."""
    from tunesmith.config import load_config

    config = load_config(config_path, overrides)  # a broken config is the user's error here too
    free_gib = max((g["free_mib"] for g in gpus), default=0.0) / 1024
    try:
        need = planned_gib(config)
    except Exception as err:  # noqa: BLE001 - an estimate is advice; the check goes on without it
        return (
            "warn",
            "memory",
            f"largest free GPU memory {free_gib:.1f} GiB; no estimate for the config ({type(err).__name__}: {err})",
        )
    if not gpus:
        return ("warn", "memory", f"the config needs about {need:.1f} GiB of GPU memory; the host has no GPU")
    status = "ok" if free_gib >= need else "fail"
    return (
        status,
        "memory",
        f"the config needs about {need:.1f} GiB; largest free GPU memory {free_gib:.1f} GiB"
        + ("" if status == "ok" else ": does not fit (`tunesmith plan` suggests settings that do)"),
    )


def planned_gib(config: Any) -> float:
    """Predicted peak GPU memory in GiB (`tunesmith plan`'s estimate for a CUDA device)."""
    from tunesmith.plan.estimate import peak_memory_for_config

    return float(peak_memory_for_config(config)) / 1024**3
