"""Preference tuning after the quick start, as a user runs it: `tunesmith train examples/dpo.yaml`
from the quick start's adapter on the bundled smart_home_pref pairs (the rejected answer a wrong slot,
extra prose or the opposite intent), and KTO on the same pairs taken unpaired.

Shares the quick-start run (tests/integration/conftest.py); each run here takes 1.5-2.5 minutes on
2 CPU cores.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).parents[2] / "src" / "tunesmith" / "examples" / "dpo.yaml"


def _train(out: Path, name: str, adapter: Path, *extra: str) -> Path:
    command = [sys.executable, "-m", "tunesmith", "train", str(EXAMPLE), "--set", f"model.adapter={adapter}"]
    for setting in (f"output_dir={out}", f"name={name}", *extra):
        command += ["--set", setting]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Held-out pairs (40): reward accuracy" in done.stdout + done.stderr
    return out / name


def test_dpo_from_the_quick_start_adapter_prefers_the_right_answer_and_keeps_json_exact(quickstart_run, tmp_path):
    quickstart, _ = quickstart_run
    run = _train(tmp_path, "dpo", quickstart)
    held = json.loads((run / "eval" / "preference.json").read_text())
    assert held["pairs"] == 40
    assert held["reward_accuracy"] >= 0.9, held
    assert held["margin"] > 0
    # the quick start's model already ranks most pairs right by log-probability; DPO widens what it learned
    assert held["tuned"]["logps_rejected"] < held["reference"]["logps_rejected"]
    before = json.loads((quickstart / "eval" / "results.json").read_text())["tuned"]["json_exact"]
    after = json.loads((run / "eval" / "results.json").read_text())["tuned"]["json_exact"]
    assert after >= before, (before, after)
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if "eval_loss" in line]
    assert evals[-1]["eval_rewards/accuracy"] >= 0.9
    assert "reward accuracy" in (run / "report.html").read_text()


def test_kto_on_the_same_pairs_unpaired_also_learns_the_preference(quickstart_run, tmp_path):
    quickstart, _ = quickstart_run
    run = _train(
        tmp_path,
        "kto",
        quickstart,
        "train.objective=kto",
        "train.sft_weight=0",
        "train.epochs=0.25",  # 20 steps of 4 rows: reward accuracy 0.95 (0.975 after 40), in a quarter of the time
        "train.eval_steps=10",
        "data.test=null",
    )
    held = json.loads((run / "eval" / "preference.json").read_text())
    assert held["pairs"] == 40  # each held-out pair's good and bad row scored as the pair
    assert held["reward_accuracy"] >= 0.8, held  # the reference scores every pair 0: any learning raises it
    assert held["margin"] > 0
