"""`make gpu-check`: one prepared script for a lent H100/H200, a few minutes long, that returns as much as it can.

    OUT=gpu-check-out HF_HUB_OFFLINE=1 .venv/bin/python bench/gpu_check.py [--budget 450] [--skip-tests]

1. Every test marked `gpu` (`python -m pytest -q -m gpu`): passed / failed / skipped counts.
2. LoRA (bf16) and QLoRA (4-bit NF4) on a Llama-3.2-1B- and a Llama-3.1-8B-shaped model with random weights,
   one packed 4096-token micro-batch per optimizer step for 20 steps, with `tunesmith train` and with TRL's
   SFTTrainer (packing, padding-free, Liger kernels, bf16; the same LoRA and tokens per step), the two
   alternating run by run, each in its own process: tokens/s after 5 warm-up steps, MFU
   (gpu_check_model.py has the FLOPs formula), peak `torch.cuda.max_memory_allocated`, tunesmith / TRL.
3. `tunesmith plan`'s CUDA memory prediction (`estimate_memory(device_kind="cuda")`) for each tunesmith run,
   against its measured peak.

Writes $OUT/gpu-check.json and $OUT/gpu-check.md (OUT defaults to ./gpu-check-out) after every step and run,
and every process's output to $OUT/gpu-check-logs.txt: three files, nothing else in $OUT. A step that fails is
recorded with its error and the next one runs; work that no longer fits the time budget (default 450 s) is
skipped and listed as such. The random-weight models are built in a background process on the CPU while
step 1 runs (the first timed run waits for the whole build, so none competes with it), in a temporary
folder removed at the end (--keep-work keeps it).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
sys.path.insert(0, str(HERE))
if importlib.util.find_spec("tunesmith") is None:  # a python without `pip install -e .` (an image's own)
    sys.path.append(str(SRC))

import gpu_check_data as data  # noqa: E402
import gpu_check_model as model  # noqa: E402
from gpu_check_report import write_outputs  # noqa: E402
from gpu_check_steps import gpu_tests_step, plan_memory_step, training_step  # noqa: E402

ROOT = HERE.parent
DEFAULT_BUDGET_S = 450.0  # 7.5 minutes
METHODS = ("lora", "qlora")
TOOLS = ("tunesmith", "trl")
LOGS = "gpu-check-logs.txt"
VERSIONED = (
    "torch",
    "transformers",
    "peft",
    "trl",
    "liger-kernel",
    "bitsandbytes",
    "accelerate",
    "triton",
    "datasets",
    "tunesmith",
)


@dataclass
class Options:
    out: Path
    budget_s: float = DEFAULT_BUDGET_S
    shapes: tuple[str, ...] = tuple(model.SHAPES)
    methods: tuple[str, ...] = METHODS
    steps: int = 20
    warmup: int = 5
    max_length: int = 4096
    rows: int = 320
    lora: dict[str, Any] = field(default_factory=lambda: {"r": 16, "alpha": 32, "dropout": 0.0})
    tests: bool = True
    tests_timeout_s: float = 150.0
    plan_reserve_s: float = 30.0  # kept for step 3 while step 2 runs
    run_estimate_s: dict[str, float] = field(default_factory=lambda: {"llama-3.2-1b": 40.0, "llama-3.1-8b": 80.0})
    """A run starts only with at least this much budget left (beyond the reserve)."""
    trl_gradient_checkpointing: str = "default"
    keep_work: bool = False
    work: Path | None = None


class Budget:
    """Seconds left of the whole call; `clock` is injectable for the tests."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic):
        self.seconds, self.clock = seconds, clock
        self.started = clock()

    def elapsed(self) -> float:
        return self.clock() - self.started

    def left(self) -> float:
        return max(0.0, self.seconds - self.elapsed())


@dataclass
class Done:
    rc: int
    stdout: str
    stderr: str
    seconds: float
    timed_out: bool = False


class Launcher:
    """Starts the processes (the tests replace it with a fake that trains nothing)."""

    def run(self, argv: list[str], *, timeout: float, cwd: Path | None = None, env: dict | None = None) -> Done:
        started = time.perf_counter()
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=max(timeout, 1), cwd=cwd, env=env, errors="replace"
            )
            return Done(done.returncode, done.stdout, done.stderr, time.perf_counter() - started)
        except subprocess.TimeoutExpired as err:

            def text(b: Any) -> str:
                return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")

            return Done(124, text(err.stdout), text(err.stderr), time.perf_counter() - started, timed_out=True)

    def start(self, argv: list[str], *, log: Path, env: dict | None = None) -> Any:
        handle = log.open("w", encoding="utf-8")
        return subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=ROOT)


PRIORITY = (("llama-3.2-1b", "lora"), ("llama-3.1-8b", "qlora"), ("llama-3.1-8b", "lora"), ("llama-3.2-1b", "qlora"))
"""The order of the (model, method) pairs, most telling first, so that a budget cut drops the least: the small
LoRA pair (quick; proves the whole path), the 8B QLoRA pair (the memory target), the 8B LoRA pair (MFU on
a large bf16 model), the small QLoRA pair last."""


def schedule(shapes: tuple[str, ...], methods: tuple[str, ...], tools: tuple[str, ...] = TOOLS) -> list[dict]:
    """The training runs in order: (model, method) pairs in PRIORITY order (others after them, as given),
    each as tunesmith then TRL, so the two trainers alternate run by run and drift falls on both."""
    wanted = [(shape, method) for shape in shapes for method in methods]
    ordered = [p for p in PRIORITY if p in wanted] + [p for p in wanted if p not in PRIORITY]
    runs = []
    for shape, method in ordered:
        for tool in tools:
            runs.append(
                {
                    "id": f"{len(runs) + 1:02d}-{shape}-{method}-{tool}",
                    "shape": shape,
                    "method": method,
                    "tool": tool,
                    "status": "pending",
                }
            )
    return runs


def tail(text: str, chars: int = 3000) -> str:
    return text[-chars:] if text else ""


class Check:
    """One call of the check: its settings, work folder, results and the writer."""

    def __init__(self, options: Options, *, launcher: Launcher | None = None, budget: Budget | None = None):
        self.options = options
        self.launcher = launcher or Launcher()
        self.budget = budget or Budget(options.budget_s)
        self.work = options.work or Path(tempfile.mkdtemp(prefix="gpu-check-"))
        self.builder: Any = None
        self.prepare_error: str | None = None
        self.results: dict[str, Any] = {
            "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "budget_s": options.budget_s,
            "elapsed_s": 0.0,
            "machine": {},
            "settings": {},
            "flops_formula": model.FORMULA,
            "steps": {
                "gpu_tests": {"status": "pending"},
                "training": {"status": "pending", "runs": schedule(options.shapes, options.methods)},
                "plan_memory": {"status": "pending", "checks": []},
            },
            "notes": [],
        }

    # ------------------------------------------------------------------ bookkeeping

    def env(self) -> dict[str, str]:
        """The child processes' environment: offline, and tunesmith importable even where it is not installed."""
        path = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(SRC)) if p)
        return {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "PYTHONUNBUFFERED": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "PYTHONPATH": path,
        }

    def log(self, name: str, text: str) -> None:
        """Append a process's output to $OUT/gpu-check-logs.txt (one file: a device call returns few files)."""
        with (self.options.out / LOGS).open("a", encoding="utf-8") as handle:
            handle.write(f"\n===== {name} ({self.budget.elapsed():.0f} s)\n{text}\n")

    def note(self, text: str) -> None:
        """A one-line note for the markdown's list (a multi-line error keeps its first and last lines)."""
        lines = [x.strip() for x in str(text).splitlines() if x.strip()]
        self.results["notes"].append(lines[0] if len(lines) < 2 else f"{lines[0]} ... {lines[-1]}")

    def save(self) -> None:
        self.results["elapsed_s"] = round(self.budget.elapsed(), 1)
        write_outputs(self.options.out, self.results)

    def step(self, name: str, fn: Callable[[Check], dict], *, needs_s: float = 1.0) -> None:
        """Run one step: its dict of results, or its error, or 'skipped' when the budget is spent."""
        record = self.results["steps"][name]
        if self.budget.left() < needs_s:
            record.update(
                status="skipped",
                reason=f"time budget: {self.budget.left():.0f} s left of {self.options.budget_s:.0f} s",
            )
            self.note(f"{name}: skipped, {record['reason']}")
        else:
            started = self.budget.elapsed()
            try:
                record.update(fn(self))
                record.setdefault("status", "ok")
            except Exception as err:  # noqa: BLE001 - a failing step is recorded and the next one runs
                record.update(
                    status="error", error=f"{type(err).__name__}: {err}", traceback=tail(traceback.format_exc(), 4000)
                )
                self.note(f"{name}: error: {type(err).__name__}: {err}")
            record["seconds"] = round(self.budget.elapsed() - started, 1)
        self.save()

    # ------------------------------------------------------------------ set-up

    def machine(self) -> dict[str, Any]:
        versions = {}
        for name in VERSIONED:
            try:
                versions[name] = importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                pass
        gpu = None
        try:
            done = self.launcher.run(
                ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"], timeout=30
            )
            lines = [x.strip() for x in done.stdout.splitlines() if x.strip()]
            gpu = lines[0] if done.rc == 0 and lines else None
        except (OSError, ValueError):
            pass
        name = gpu.split(",")[0].strip() if gpu else None
        peak, source = model.peak_flops(name)
        return {
            "gpu": gpu,
            "gpu_name": name,
            "gpus": 0 if gpu is None else len(lines),
            "peak_flops": peak,
            "peak_source": source,
            "versions": versions,
            "python": sys.version.split()[0],
            "cpu_count": os.cpu_count(),
        }

    def prepare(self) -> None:
        """Data, configs and the model folders' tokenizer and config.json (what step 3 needs), then the
        background build of the weights."""
        o = self.options
        rows = data.synthetic_rows(o.rows)
        self.data_file = data.write_jsonl(self.work / "train.jsonl", rows)
        self.model_dirs = {shape: self.work / "models" / shape for shape in o.shapes}
        for shape, folder in self.model_dirs.items():
            data.write_model_folder(folder, shape, weights=False)
        self.lengths = data.sequence_lengths(rows, data.TOKENIZER_DIR)
        too_long = sum(n > o.max_length for n in self.lengths)
        self.configs: dict[str, Path] = {}
        for run in self.results["steps"]["training"]["runs"]:
            if run["tool"] == "tunesmith":
                config = data.tunesmith_config(
                    name=run["id"],
                    output_dir=self.work / "runs",
                    model=self.model_dirs[run["shape"]],
                    data=self.data_file,
                    method=run["method"],
                    steps=o.steps,
                    max_length=o.max_length,
                    lora=o.lora,
                )
                self.configs[run["id"]] = data.write_config(self.work / "configs" / f"{run['id']}.yaml", config)
        self.results["settings"] = {
            "steps": o.steps,
            "warmup_steps": o.warmup,
            "tokens_per_micro_batch": o.max_length,
            "rows": o.rows,
            "conversation_tokens": {
                "total": sum(self.lengths),
                "min": min(self.lengths),
                "max": max(self.lengths),
                "longer_than_max_length": too_long,
            },
            "lora": {**o.lora, "target_modules": "all-linear"},
            "trl_gradient_checkpointing": o.trl_gradient_checkpointing,
            "description": (
                f"Random-weight Llama shapes, {o.rows} synthetic chat rows ({sum(self.lengths):,} tokens, "
                f"{min(self.lengths)}-{max(self.lengths)} per conversation), one packed micro-batch of <= "
                f"{o.max_length} tokens per optimizer step, {o.steps} steps, tokens/s after {o.warmup} warm-up "
                f"steps. LoRA r={o.lora['r']}, alpha {o.lora['alpha']}, all linear layers, AdamW (torch), bf16. "
                f"tunesmith: `tunesmith train` (sdpa, no gradient checkpointing). TRL: SFTTrainer, packing (BFD), "
                f"padding_free, use_liger_kernel, sdpa, gradient checkpointing {o.trl_gradient_checkpointing} "
                f"(TRL's default is on). Each run in its own process, tunesmith and TRL alternating. MFU: "
                "model FLOPs per token (see below) x tokens/s / "
                f"{self.results['machine'].get('peak_flops', 0) / 1e12:.0f} "
                f"TFLOP/s. Memory: `torch.cuda.max_memory_allocated`, GiB."
            ),
        }
        if not self.results["machine"].get("gpu"):
            return  # no run will need the weights
        specs = [f"{shape}={folder}" for shape, folder in self.model_dirs.items()]
        self.builder = self.launcher.start(
            [sys.executable, str(HERE / "gpu_check_workers.py"), "build", *specs],
            log=self.work / "build-models.log",
            env={**self.env(), "CUDA_VISIBLE_DEVICES": ""},
        )

    def wait_for_model(self, shape: str, timeout: float) -> Path:
        """The model folder of `shape` once the background build has ended (no build competes with a timed run
        for the CPU); raises if this shape's weights were not written, or the build took longer than `timeout`."""
        folder = self.model_dirs[shape]
        deadline = self.budget.elapsed() + timeout
        while self.builder is not None and self.builder.poll() is None:
            if self.budget.elapsed() >= deadline:
                raise TimeoutError(f"the models were not built within {timeout:.0f} s")
            time.sleep(0.5)
        if not (folder / data.READY).exists():
            log = self.work / "build-models.log"
            text = log.read_text(errors="replace") if log.exists() else ""
            raise RuntimeError(f"building the {shape} model failed: {tail(text, 1500)}")
        return folder

    def run(self) -> dict[str, Any]:
        o = self.options
        o.out.mkdir(parents=True, exist_ok=True)
        (o.out / LOGS).unlink(missing_ok=True)
        try:
            self.results["machine"] = self.machine()
            if not self.results["machine"]["gpu"]:
                self.note("nvidia-smi found no GPU: the training runs are not started")
            try:
                self.prepare()
            except Exception as err:  # noqa: BLE001 - steps 1 still runs; 2 and 3 say why they cannot
                self.prepare_error = f"{type(err).__name__}: {err}"
                self.note(f"set-up failed: {self.prepare_error}")
                self.results["setup_traceback"] = tail(traceback.format_exc(), 4000)
            self.save()
            if o.tests:
                self.step("gpu_tests", gpu_tests_step)
            else:
                self.results["steps"]["gpu_tests"].update(status="skipped", reason="--skip-tests")
            self.step("training", training_step, needs_s=o.plan_reserve_s)
            self.step("plan_memory", plan_memory_step)
        finally:
            if self.builder is not None and self.builder.poll() is None:
                self.builder.kill()
            build_log = self.work / "build-models.log"
            if build_log.exists():
                self.log("build-models", tail(build_log.read_text(errors="replace"), 20_000))
            if not o.keep_work:
                shutil.rmtree(self.work, ignore_errors=True)
            self.save()
        return self.results


def parse_args(argv: list[str] | None = None) -> Options:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "gpu-check-out"))
    p.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S, help="seconds for the whole call")
    p.add_argument("--shapes", default=",".join(model.SHAPES))
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--skip-tests", action="store_true", help="leave out step 1 (pytest -m gpu)")
    p.add_argument("--trl-gradient-checkpointing", choices=("default", "on", "off"), default="default")
    p.add_argument("--keep-work", action="store_true", help="keep the temporary folder (models, runs)")
    a = p.parse_args(argv)
    shapes = tuple(s for s in a.shapes.split(",") if s)
    unknown = [s for s in shapes if s not in model.SHAPES]
    if unknown:
        p.error(f"unknown shape(s) {unknown}; known: {', '.join(model.SHAPES)}")
    return Options(
        out=a.out,
        budget_s=a.budget,
        shapes=shapes,
        methods=tuple(m for m in a.methods.split(",") if m),
        steps=a.steps,
        tests=not a.skip_tests,
        trl_gradient_checkpointing=a.trl_gradient_checkpointing,
        keep_work=a.keep_work,
    )


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    results = Check(options).run()
    print((options.out / "gpu-check.md").read_text(encoding="utf-8"))
    print(f"wrote {options.out / 'gpu-check.json'} and {options.out / 'gpu-check.md'}")
    return 0 if all(s.get("status") in ("ok", "skipped") for s in results["steps"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
