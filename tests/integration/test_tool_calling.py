"""The bundled tool-calling task on the embedded model with the built-in tool template.

SmolLM2's own template renders no tool calls (such rows are refused, see tests/unit/test_refusals.py);
with `chatml_tools` the `<tool_call>` block and its `<|im_end|>` train. After one short epoch the
tuned model must call the right tool with the right arguments on at least 80% of the held-out
requests, in a form that parses; the base model's figure is recorded beside it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest

from tunesmith.evaluate.metrics import tool_calls_in

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tool_run(tmp_path_factory) -> Path:
    config = Path(str(resources.files("tunesmith") / "examples" / "tools.yaml"))
    out = tmp_path_factory.mktemp("tools")
    done = subprocess.run(
        [sys.executable, "-m", "tunesmith", "train", str(config), "--set", f"output_dir={out}", "--set", "name=tools"],
        capture_output=True,
        text=True,
        timeout=2400,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return out / "tools"


def test_the_tuned_model_calls_the_right_tool_with_the_right_arguments(tool_run):
    results = json.loads((tool_run / "eval" / "results.json").read_text())
    assert results["n"] == 40
    assert results["tuned"]["tool_call"] >= 0.8, results
    assert results["tuned"]["tool_call"] > results["base"]["tool_call"]
    samples = [json.loads(line) for line in (tool_run / "eval" / "samples.jsonl").read_text().splitlines()]
    parsed = [tool_calls_in(s["tuned"]) for s in samples]
    assert sum(bool(calls) for calls in parsed) >= 0.8 * len(samples)  # calls that parse, by themselves
    print(f"\ntool_call: base {results['base']['tool_call']:.3f}, tuned {results['tuned']['tool_call']:.3f}")


def test_the_run_records_the_tool_template_for_inference(tool_run):
    meta = json.loads((tool_run / "adapter" / "tunesmith.json").read_text())
    assert meta["template_name"] == "built-in chatml_tools" and "<tool_call>" in meta["chat_template"]
    assert meta["end_of_turn"][0] == "<|im_end|>"
