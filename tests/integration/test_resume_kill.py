"""`tunesmith train` as a separate process, killed (SIGKILL) or stopped (SIGTERM) mid-epoch, then
resumed with --resume: the adapter must match an uninterrupted run's. Supervised and DPO runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tunesmith.training import checkpoints as ck

pytestmark = pytest.mark.integration
STEPS = 16  # 2 epochs of 8 optimizer steps


@pytest.fixture(scope="module")
def config(tiny_model_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("kill")
    data = root / "train.jsonl"
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"What is {i} plus {i}?"},
                {"role": "assistant", "content": f"{i + i}"},
            ]
        }
        for i in range(16)
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    path = root / "tiny.yaml"
    path.write_text(
        f"model:\n  name: {tiny_model_dir}\ndata:\n  train: {data}\noutput_dir: {root / 'runs'}\n"
        "template:\n  max_length: 64\nlora:\n  r: 4\n  dropout: 0.1\n"
        "train:\n  epochs: 2\n  batch_size: 2\n  packing: none\n  learning_rate: 1.0e-2\n"
        "  save_steps: 2\n  keep_checkpoints: 2\n",
        encoding="utf-8",
    )
    return path


@pytest.fixture(scope="module")
def dpo_config(config) -> Path:
    """The same run as `config`, on pairs with train.objective: dpo (reference log-probs kept in the run)."""
    data = config.parent / "pairs.jsonl"
    rows = [
        {"prompt": f"What is {i} plus {i}?", "chosen": f"{i + i}", "rejected": f"{i + i + 1}, I believe"}
        for i in range(16)
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    path = config.parent / "dpo" / "dpo.yaml"  # its runs in dpo/runs
    path.parent.mkdir()
    text = config.read_text().replace(f"train: {config.parent / 'train.jsonl'}", f"train: {data}")
    text = text.replace(f"output_dir: {config.parent / 'runs'}", f"output_dir: {path.parent / 'runs'}")
    path.write_text(text.replace("  packing: none\n", "  objective: dpo\n"), encoding="utf-8")
    return path


def tunesmith(*args: str) -> list[str]:
    return [sys.executable, "-m", "tunesmith", "train", *args]


def env() -> dict[str, str]:
    return dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")


def run_dir(config: Path, name: str) -> Path:
    return config.parent / "runs" / name


def straight_run(config: Path) -> Path:
    done = subprocess.run(
        tunesmith(str(config), "--set", "name=straight"), capture_output=True, text=True, timeout=900, env=env()
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return run_dir(config, "straight")


@pytest.fixture(scope="module")
def uninterrupted(config) -> Path:
    return straight_run(config)


def start_and_signal(config: Path, name: str, sig: int) -> tuple[subprocess.Popen, int]:
    """Start a run, send `sig` as soon as its first checkpoint is complete; return it and that step."""
    process = subprocess.Popen(
        tunesmith(str(config), "--set", f"name={name}"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env(),
    )
    checkpoints = run_dir(config, name) / "checkpoints"
    deadline = time.monotonic() + 600
    while not ck.checkpoint_steps(checkpoints):
        assert process.poll() is None, process.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    process.send_signal(sig)
    return process, ck.checkpoint_steps(checkpoints)[0][0]


def adapter_diff(a: Path, b: Path) -> float:
    left = load_file(a / "adapter" / "adapter_model.safetensors")
    right = load_file(b / "adapter" / "adapter_model.safetensors")
    assert left.keys() == right.keys()
    return max((left[k] - right[k]).abs().max().item() for k in left)


def logged_steps(run: Path) -> list[int]:
    return [
        json.loads(line)["step"]
        for line in (run / "metrics.jsonl").read_text().splitlines()
        if "loss" in json.loads(line)
    ]


@pytest.mark.parametrize("objective", ["sft", "dpo"])
def test_sigkill_mid_epoch_then_resume_matches_the_uninterrupted_run(objective, request):
    config = request.getfixturevalue("config" if objective == "sft" else "dpo_config")
    uninterrupted = request.getfixturevalue("uninterrupted") if objective == "sft" else straight_run(config)
    process, first = start_and_signal(config, "killed", signal.SIGKILL)
    process.wait(timeout=60)
    run = run_dir(config, "killed")
    assert process.returncode == -signal.SIGKILL
    assert not (run / "adapter").exists() and not (run / "manifest.json").exists()  # it died before the end
    resume_from = ck.newest_complete(run / "checkpoints")
    assert resume_from is not None and first <= int(resume_from.name.split("-")[1]) < STEPS

    done = subprocess.run(tunesmith(str(run), "--resume"), capture_output=True, text=True, timeout=900, env=env())
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"Resuming from {resume_from}" in done.stdout.replace("\n", "")
    assert adapter_diff(run, uninterrupted) <= 1e-6
    assert logged_steps(run) == list(range(1, STEPS + 1))  # nothing logged twice, nothing missing
    if objective == "dpo":  # the reference was scored once, before the kill, and read back on resume
        assert "reference log-probabilities read from" in done.stdout.replace("\n", " ")
        assert (run / "reference_logps.safetensors").exists()


def test_sigterm_checkpoints_the_current_step_and_exits_resumable(config, uninterrupted):
    process, _ = start_and_signal(config, "stopped", signal.SIGTERM)
    output = process.communicate(timeout=300)[0]
    run = run_dir(config, "stopped")
    assert process.returncode == 143, output[-3000:]
    assert f"tunesmith train {run} --resume" in output.replace("\n", "")
    step = json.loads((run / "manifest.json").read_text())["metrics"]["step"]
    assert json.loads((run / "manifest.json").read_text())["status"] == "interrupted"
    assert step < STEPS and logged_steps(run)[-1] == step  # the step it was on when the signal came
    assert ck.newest_complete(run / "checkpoints") == run / "checkpoints" / f"step-{step}"

    done = subprocess.run(
        tunesmith(str(config), "--set", "name=stopped", "--resume"),
        capture_output=True,
        text=True,
        timeout=900,
        env=env(),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"step-{step} (step {step}" in done.stdout.replace("\n", "")
    assert adapter_diff(run, uninterrupted) <= 1e-6
    assert json.loads((run / "manifest.json").read_text())["status"] == "completed"
