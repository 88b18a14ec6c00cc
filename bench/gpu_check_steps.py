"""The three steps of `bench/gpu_check.py`; each takes the `Check` and returns its step's results.

A step raises only for what stops it as a whole (Check.step records that and goes on with the next);
one training run or one prediction that fails is recorded in its own entry and the step continues.
"""

from __future__ import annotations

import json
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import gpu_check_data as data
import gpu_check_model as model
from gpu_check_report import pairs

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORKERS = HERE / "gpu_check_workers.py"
RESULT = "RESULT "


def _tail(text: str, chars: int = 3000) -> str:
    return text[-chars:] if text else ""


def _log(check: Any, name: str, argv: list[str], done: Any) -> None:
    """The command's output (the last 100,000 characters of each stream), appended to the one log file."""
    check.log(
        name,
        f"$ {' '.join(map(str, argv))}\nrc={done.rc} seconds={done.seconds:.1f} "
        f"timed_out={done.timed_out}\n--- stdout\n{_tail(done.stdout, 100_000)}\n--- stderr\n"
        f"{_tail(done.stderr, 100_000)}",
    )


# ---------------------------------------------------------------------- step 1


def junit_counts(path: Path) -> dict[str, int] | None:
    """passed / failed / errors / skipped from pytest's JUnit XML, None if there is none."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    total = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    return {
        "passed": total["tests"] - total["failures"] - total["errors"] - total["skipped"],
        "failed": total["failures"],
        "errors": total["errors"],
        "skipped": total["skipped"],
    }


def summary_counts(output: str) -> dict[str, int]:
    """Counts from pytest's closing line ('3 passed, 1 failed, 2 skipped in 4.2s'); zeros where absent."""
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    lines = [x for x in output.splitlines() if re.search(r"\b(passed|failed|skipped|error|errors|deselected)\b", x)]
    for number, word in re.findall(r"(\d+) (passed|failed|skipped|errors?)\b", lines[-1] if lines else ""):
        counts["errors" if word.startswith("error") else word] += int(number)
    return counts


def gpu_tests_step(check: Any) -> dict[str, Any]:
    """Every test marked `gpu`, in a fresh pytest process, with a time limit of its own."""
    xml = check.work / "pytest-gpu.xml"
    timeout = min(check.options.tests_timeout_s, check.budget.left())
    argv = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", f"--junitxml={xml}"]
    done = check.launcher.run(argv, timeout=timeout, cwd=ROOT, env=check.env())
    _log(check, "pytest-gpu", argv, done)
    counts = junit_counts(xml) or summary_counts(done.stdout)
    status = "timeout" if done.timed_out else {0: "ok", 1: "failed"}.get(done.rc, "error")
    out: dict[str, Any] = {
        "status": status,
        "rc": done.rc,
        **counts,
        "output_tail": _tail(done.stdout + "\n" + done.stderr, 4000),
    }
    if status == "timeout":
        out["error"] = f"pytest stopped after {timeout:.0f} s (its time limit)"
    elif status == "error":
        last = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
        out["error"] = f"pytest exited {done.rc}: {last}"
    if status != "ok":
        check.note(
            f"gpu_tests: {status}"
            + (f": {out['error']}" if "error" in out else f": {counts['failed']} failed, {counts['errors']} errors")
        )
    return out


# ---------------------------------------------------------------------- step 2


def _tunesmith_run(check: Any, run: dict, timeout: float) -> dict[str, Any]:
    argv = [sys.executable, "-m", "tunesmith", "train", str(check.configs[run["id"]])]
    done = check.launcher.run(argv, timeout=timeout, cwd=check.work, env=check.env())
    _log(check, run["id"], argv, done)
    if done.timed_out:
        return {"status": "timeout", "error": f"stopped after {timeout:.0f} s (the budget left)"}
    if done.rc != 0:
        return {"status": "error", "error": f"tunesmith train exited {done.rc}: {_tail(done.stderr, 1500)}"}
    metrics = check.work / "runs" / run["id"] / "metrics.jsonl"
    marks = data.tunesmith_marks(metrics)
    return {
        "status": "ok",
        "tokens_per_s": model.steady_rate(marks, check.options.warmup),
        "steps": len(marks),
        "tokens": marks[-1][1] if marks else 0,
        "peak_bytes": data.tunesmith_peak_bytes(metrics),
        "marks": marks,
    }


def _trl_run(check: Any, run: dict, timeout: float, *, liger: bool = True) -> dict[str, Any]:
    o = check.options
    argv = [
        sys.executable,
        str(WORKERS),
        "trl",
        "--model",
        str(check.model_dirs[run["shape"]]),
        "--data",
        str(check.data_file),
        "--out",
        str(check.work / "runs" / run["id"]),
        "--method",
        run["method"],
        "--steps",
        str(o.steps),
        "--warmup",
        str(o.warmup),
        "--max-length",
        str(o.max_length),
        "--r",
        str(o.lora["r"]),
        "--alpha",
        str(o.lora["alpha"]),
        "--dropout",
        str(o.lora["dropout"]),
        "--gradient-checkpointing",
        o.trl_gradient_checkpointing,
    ] + ([] if liger else ["--no-liger"])
    done = check.launcher.run(argv, timeout=timeout, cwd=check.work, env=check.env())
    _log(check, run["id"] + ("" if liger else "-no-liger"), argv, done)
    line = next((x for x in reversed(done.stdout.splitlines()) if x.startswith(RESULT)), None)
    if done.timed_out:
        return {"status": "timeout", "error": f"stopped after {timeout:.0f} s (the budget left)"}
    if done.rc != 0 or line is None:
        return {"status": "error", "error": f"TRL worker exited {done.rc}: {_tail(done.stderr, 1500)}"}
    result = json.loads(line[len(RESULT) :])
    return {
        "status": "ok",
        "liger": liger,
        **{
            k: result.get(k)
            for k in (
                "tokens_per_s",
                "steps",
                "tokens",
                "peak_bytes",
                "marks",
                "trainable",
                "gradient_checkpointing",
                "settings",
            )
        },
    }


def training_step(check: Any) -> dict[str, Any]:
    """The scheduled runs in order; each is skipped when what is left of the budget (less the reserve
    for step 3) is below its estimate, and recorded however it ends."""
    o = check.options
    runs = check.results["steps"]["training"]["runs"]
    if getattr(check, "prepare_error", None):
        raise RuntimeError(f"set-up failed: {check.prepare_error}")
    if not check.results["machine"].get("gpu"):
        for run in runs:
            run.update(status="skipped", reason="no CUDA GPU (nvidia-smi)")
        return {"status": "skipped", "reason": "no CUDA GPU (nvidia-smi found none)"}
    peak = check.results["machine"]["peak_flops"]
    for run in runs:
        needs = o.run_estimate_s.get(run["shape"], 100.0) + o.plan_reserve_s
        if check.budget.left() < needs:
            run.update(
                status="skipped",
                reason=f"time budget: {check.budget.left():.0f} s left, a "
                f"{run['shape']} run needs about {needs:.0f} s with step 3",
            )
            check.note(f"{run['id']}: skipped ({run['reason']})")
            check.save()
            continue
        started = check.budget.elapsed()
        try:
            check.wait_for_model(run["shape"], timeout=check.budget.left() - needs)
            timeout = check.budget.left() - o.plan_reserve_s
            if run["tool"] == "tunesmith":
                run.update(_tunesmith_run(check, run, timeout))
            else:
                run.update(_trl_run(check, run, timeout))
                error = run.get("error") or ""
                if run["status"] == "error" and "liger" in error.lower() and check.budget.left() >= needs:
                    first = error
                    run.update(_trl_run(check, run, check.budget.left() - o.plan_reserve_s, liger=False))
                    run["liger_error"] = first
                    check.note(f"{run['id']}: TRL failed with Liger kernels and was run again without them")
        except Exception as err:  # noqa: BLE001 - one run's failure is that run's entry
            run.update(status="error", error=f"{type(err).__name__}: {err}")
        run["seconds"] = round(check.budget.elapsed() - started, 1)
        if run["status"] == "ok":
            flops = model.flops_per_token(run["shape"], method=run["method"], lengths=check.lengths, r=o.lora["r"])
            run.update(
                flops_per_token=flops,
                mfu=model.mfu(run.get("tokens_per_s"), flops["total"], peak),
                peak_gib=None if run.get("peak_bytes") is None else round(run["peak_bytes"] / 2**30, 3),
            )
        else:
            check.note(f"{run['id']}: {run['status']}: {str(run.get('error', ''))[-300:]}")
        check.save()
    statuses = {r["status"] for r in runs}
    status = (
        "ok"
        if statuses == {"ok"}
        else "skipped"
        if statuses == {"skipped"}
        else "partial"
        if "ok" in statuses
        else "error"
    )
    return {"status": status, "pairs": pairs(runs)}


# ---------------------------------------------------------------------- step 3


def plan_memory_step(check: Any) -> dict[str, Any]:
    """estimate_memory(device_kind="cuda") for each tunesmith run's config, as `tunesmith plan` calls it,
    against the run's measured peak (when it ran)."""
    if getattr(check, "prepare_error", None):
        raise RuntimeError(f"set-up failed: {check.prepare_error}")
    if check.builder is not None and check.builder.poll() is None:
        check.builder.kill()  # no run will need its models now; it must not rewrite config.json under us
    from tunesmith.config import load_config
    from tunesmith.plan import estimate as est
    from tunesmith.plan import shapes

    checks = check.results["steps"]["plan_memory"]["checks"]
    for run in check.results["steps"]["training"]["runs"]:
        if run["tool"] != "tunesmith":
            continue
        entry: dict[str, Any] = {"shape": run["shape"], "method": run["method"], "run": run["id"]}
        checks.append(entry)
        if check.budget.left() < 3:
            entry.update(status="skipped", reason="time budget spent")
            check.note(f"plan_memory {run['id']}: skipped (time budget spent)")
            continue
        try:
            config = load_config(check.configs[run["id"]])
            hf_config = shapes.hf_config_for(config)
            batch = shapes.micro_batch(config)
            # bf16: the H100/H200 runs bf16 (`plan` asks torch; this process never touches the GPU)
            found = est.estimate_memory(
                config, method=config.method, device_kind="cuda", batch=batch, hf_config=hf_config, bf16=True
            )
            measured = run.get("peak_bytes") if run.get("status") == "ok" else None
            entry.update(
                status="ok",
                predicted_bytes=found.total_bytes,
                measured_bytes=measured,
                ratio=found.total_bytes / measured if measured else None,
                parts=found.parts,
                micro_batch_tokens=batch.tokens,
                trained_positions=batch.trained,
                settings={
                    k: found.settings.get(k)
                    for k in ("precision", "attention", "weight_dtype", "optimizer", "gradient_checkpointing")
                },
            )
        except Exception as err:  # noqa: BLE001 - one failed prediction is its own entry
            entry.update(status="error", error=f"{type(err).__name__}: {err}")
            check.note(f"plan_memory {run['id']}: error: {type(err).__name__}: {err}")
        check.save()
    statuses = {c["status"] for c in checks}
    return {"status": "ok" if statuses <= {"ok"} else "partial" if "ok" in statuses else "error"}
