"""Full fine-tuning of the embedded model on the bundled task converges (LoRA: test_quickstart.py)."""

from __future__ import annotations

import json

import pytest

import tunesmith
from tunesmith.cli.train import quickstart_config_path
from tunesmith.config import load_config

pytestmark = pytest.mark.integration


def test_full_fine_tuning_learns_the_task(tmp_path):
    config = load_config(
        quickstart_config_path(),
        [
            "method=full",
            "train.learning_rate=1e-4",
            "train.max_steps=30",
            "train.warmup_ratio=0.1",
            "eval.limit=20",
            "eval.compare_base=false",
            "data.validation=null",
            f"output_dir={tmp_path}",
            "name=full",
        ],
    )
    result = tunesmith.train(config)
    losses = [
        json.loads(line)["loss"]
        for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()
        if '"loss"' in line
    ]
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < sum(losses[:3]) / 3 / 4  # the loss falls by more than 4x
    tuned = result.metrics["eval"]["tuned"]
    assert tuned["json_valid"] >= 0.9 and tuned["json_exact"] >= 0.5, tuned
    assert (result.run_dir / "model" / "model.safetensors").is_file()
