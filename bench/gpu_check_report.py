"""`bench/gpu_check.py`'s outputs: gpu-check.json (everything) and gpu-check.md (the tables).

Both are rewritten after every step and every run, so a call cut short still leaves what it measured.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

GIB = 2**30
TRAINING_HEADER = (
    "| model | method | trainer | tokens/s | MFU | peak memory (GiB) | tunesmith / TRL tokens/s "
    "| tunesmith / TRL memory | steps | status |"
)
PLAN_HEADER = "| model | method | predicted peak (GiB) | measured peak (GiB) | predicted / measured |"
TRAINING_ALIGN = "|---|---|---|---:|---:|---:|---:|---:|---:|---|"
PLAN_ALIGN = "|---|---|---:|---:|---:|"


def pairs(runs: list[dict]) -> list[dict]:
    """tunesmith against TRL for each (model, method) where both runs finished: the ratios of tokens/s and
    of peak memory (tunesmith / TRL; above 1 is faster, resp. more memory)."""
    done: dict[tuple[str, str, str], dict] = {}
    for run in runs:
        if run.get("status") == "ok":
            done[(run["shape"], run["method"], run["tool"])] = run
    out = []
    seen = []
    for run in runs:
        key = (run["shape"], run["method"])
        if key in seen:
            continue
        seen.append(key)
        ours, theirs = done.get((*key, "tunesmith")), done.get((*key, "trl"))
        if not ours or not theirs:
            continue
        out.append(
            {
                "shape": key[0],
                "method": key[1],
                "tokens_per_s_ratio": _ratio(ours.get("tokens_per_s"), theirs.get("tokens_per_s")),
                "peak_ratio": _ratio(ours.get("peak_bytes"), theirs.get("peak_bytes")),
            }
        )
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _gib(value: float | None) -> str:
    return "-" if value is None else f"{value / GIB:.2f}"


def _status(item: dict) -> str:
    status = item.get("status", "?")
    why = item.get("error") or item.get("reason")
    if status == "ok" or not why:
        return status
    first = str(why).strip().splitlines()[-1] if str(why).strip() else ""
    return f"{status}: {first[:160]}".replace("|", "\\|")


def training_table(runs: list[dict]) -> str:
    ratios = {(p["shape"], p["method"]): p for p in pairs(runs)}
    lines = [TRAINING_HEADER, TRAINING_ALIGN]
    for run in runs:
        pair = ratios.get((run["shape"], run["method"])) if run["tool"] == "tunesmith" else None
        lines.append(
            "| "
            + " | ".join(
                [
                    run["shape"],
                    run["method"],
                    run["tool"] + (" (no Liger)" if run.get("liger") is False else ""),
                    _num(run.get("tokens_per_s"), ",.0f"),
                    _num(run.get("mfu") and 100 * run["mfu"], ".1f") + ("%" if run.get("mfu") is not None else ""),
                    _gib(run.get("peak_bytes")),
                    _num(pair and pair["tokens_per_s_ratio"], ".2f")
                    + ("x" if pair and pair["tokens_per_s_ratio"] else ""),
                    _num(pair and pair["peak_ratio"], ".2f") + ("x" if pair and pair["peak_ratio"] else ""),
                    str(run.get("steps", "-")),
                    _status(run),
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def plan_table(checks: list[dict]) -> str:
    lines = [PLAN_HEADER, PLAN_ALIGN]
    for c in checks:
        lines.append(
            f"| {c['shape']} | {c['method']} | {_gib(c.get('predicted_bytes'))} | "
            f"{_gib(c.get('measured_bytes'))} | "
            f"{_num(c.get('ratio'), '.2f')}{'' if c.get('ratio') is None else 'x'} |"
        )
    return "\n".join(lines)


def markdown(results: dict[str, Any]) -> str:
    steps = results.get("steps", {})
    machine = results.get("machine", {})
    settings = results.get("settings", {})
    out = [
        "# GPU check",
        "",
        f"{machine.get('gpu') or 'no CUDA GPU found'}; torch {machine.get('versions', {}).get('torch', '?')}, "
        f"trl {machine.get('versions', {}).get('trl', '-')}, liger-kernel "
        f"{machine.get('versions', {}).get('liger-kernel', '-')}. Started {results.get('started', '?')}, "
        f"{results.get('elapsed_s', 0):.0f} s of a {results.get('budget_s', 0):.0f} s budget.",
        "",
    ]
    tests = steps.get("gpu_tests", {})
    counts = ", ".join(f"{tests[k]} {k}" for k in ("passed", "failed", "errors", "skipped") if k in tests)
    out += [
        "## 1. GPU tests (`pytest -m gpu`)",
        "",
        f"{_status(tests)}"
        + (f": {counts}" if counts else "")
        + (f" ({tests['seconds']:.0f} s)" if "seconds" in tests else ""),
        "",
    ]
    training = steps.get("training", {})
    out += [
        "## 2. Training: tunesmith against TRL",
        "",
        f"{settings.get('description', '')}",
        "",
        f"Step status: {_status(training)}",
        "",
        training_table(training.get("runs", [])),
        "",
    ]
    plan = steps.get("plan_memory", {})
    out += [
        "## 3. `plan`'s CUDA memory prediction against the tunesmith runs",
        "",
        f"Step status: {_status(plan)}",
        "",
        plan_table(plan.get("checks", [])),
        "",
    ]
    notes = results.get("notes", [])
    if notes:
        out += ["## Skipped, errors, notes", "", *[f"- {n}" for n in notes], ""]
    out += ["FLOPs per token (MFU):", "", "```", results.get("flops_formula", "").strip(), "```", ""]
    return "\n".join(out)


def write_outputs(out: Path, results: dict[str, Any]) -> None:
    """gpu-check.json and gpu-check.md in `out`, each written whole under a temporary name first."""
    out.mkdir(parents=True, exist_ok=True)
    for name, text in (
        ("gpu-check.json", json.dumps(results, indent=2, default=str)),
        ("gpu-check.md", markdown(results)),
    ):
        tmp = out / (name + ".tmp")
        tmp.write_text(text + "\n", encoding="utf-8")
        os.replace(tmp, out / name)
