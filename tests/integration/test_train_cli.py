"""`tunesmith train` on the embedded model for a few steps through the CLI, then eval and load back."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from peft import PeftModel
from transformers import AutoModelForCausalLM

from tunesmith.models.embedded import ensure_embedded_model

pytestmark = pytest.mark.integration


def test_train_a_few_steps_then_eval_and_load(tmp_path):
    config = tmp_path / "short.yaml"
    config.write_text(
        "model:\n  name: smollm2-135m-instruct\n"
        "data:\n  train: bundled:smart_home/train.jsonl\n  test: bundled:smart_home/test.jsonl\n"
        "template:\n  max_length: 256\n"
        "train:\n  max_steps: 3\n  batch_size: 4\n  learning_rate: 1.0e-3\n"
        "eval:\n  limit: 4\n  metrics: [json_valid]\n",
        encoding="utf-8",
    )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tunesmith",
            "train",
            str(config),
            "--set",
            "name=short",
            "--set",
            f"output_dir={tmp_path / 'runs'}",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "runs" / "short"
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if "loss" in line]
    assert [s["step"] for s in steps] == [1, 2, 3]

    again = subprocess.run(
        [sys.executable, "-m", "tunesmith", "eval", str(run), "--limit", "2", "--no-base"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    results = json.loads((run / "eval" / "results.json").read_text())
    assert results["n"] == 2 and "base" not in results and "json_valid" in results["tuned"]

    base = AutoModelForCausalLM.from_pretrained(ensure_embedded_model("smollm2-135m-instruct"))
    model = PeftModel.from_pretrained(base, run / "adapter")
    assert sum(p.numel() for n, p in model.named_parameters() if "lora_" in n) == 4_884_480
