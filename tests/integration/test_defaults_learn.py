"""Defaults that learn: the bundled identity set (40 rows teaching the embedded model its name) trained
with no training settings in the config. tunesmith chooses packing, batch size, epochs and learning
rate from the data, says so before training and in the report, and the tuned model names itself on
held-out questions phrased unlike any training row."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).parents[2] / "src" / "tunesmith" / "examples" / "identity.yaml"


def test_forty_identity_rows_with_no_train_settings_teach_the_name(tmp_path):
    assert "train" not in yaml.safe_load(EXAMPLE.read_text())  # nothing chosen by hand
    command = [sys.executable, "-m", "tunesmith", "train", str(EXAMPLE), "--set", f"output_dir={tmp_path}"]
    done = subprocess.run([*command, "--set", "name=identity"], capture_output=True, text=True, timeout=1800)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    assert "Chosen from the data" in out and "train.batch_size" in out
    run = tmp_path / "identity"
    schedule = json.loads((run / "data_report.json").read_text())["schedule"]
    assert schedule["optimizer_steps"] >= 32 and schedule["warning"] is None
    assert {c["setting"] for c in schedule["chosen"]} >= {"train.batch_size", "train.epochs", "train.learning_rate"}
    results = json.loads((run / "eval" / "results.json").read_text())
    assert results["tuned"]["contains"] >= 0.8, results
    assert results["base"]["contains"] <= 0.2, results
    report = (run / "report.html").read_text()
    assert "chosen from the data" in report and "No warnings" in report
