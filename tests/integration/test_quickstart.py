"""The quick start as a new user runs it, through the CLI: the numbers the README promises.

One real run (about 4 minutes on 2 CPU cores, shared with test_gguf_llamacpp.py) backs every test here.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from tunesmith.models.embedded import ensure_embedded_model

pytestmark = pytest.mark.integration

BUNDLED = Path(__file__).parents[2] / "src" / "tunesmith" / "data" / "bundled" / "smart_home"

# Requests in the style of the bundled data (scripts/make_smart_home.py: its phrasings, its slot values)
# whose phrasing and value together are in no split: the tuned model has to generalise, not recall.
# `test_new_requests_are_in_no_split` checks that against train, val and test.
NEW_REQUESTS = {
    "Could you unlock the patio door please?": {"intent": "unlock_door", "slots": {"door": "patio door"}},
    "set the kitchen to 21 degrees": {"intent": "set_temperature", "slots": {"room": "kitchen", "temperature": 21}},
    "play jazz in the office": {"intent": "play_music", "slots": {"genre": "jazz", "room": "office"}},
    "Set a timer for 25 minutes.": {"intent": "set_timer", "slots": {"minutes": 25}},
}


def normalise(request: str) -> str:
    """A request as the splits are compared: lower case, punctuation gone, spaces collapsed, no "please"."""
    words = re.sub(r"[^\w\s]", " ", request.lower()).split()
    return " ".join(words[:-1] if words[-1:] == ["please"] else words)


def bundled_requests() -> set[str]:
    """Every user request in train, val and test, normalised."""
    found = set()
    for split in ("train", "val", "test"):
        rows = [json.loads(line) for line in (BUNDLED / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]
        assert rows, split
        found |= {normalise(m["content"]) for row in rows for m in row["messages"] if m["role"] == "user"}
    return found


def in_no_split(request: str) -> bool:
    return normalise(request) not in bundled_requests()


def tunesmith(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tunesmith", *args], input=stdin, capture_output=True, text=True, timeout=2400
    )  # generous: a loaded machine runs 3x slower


@pytest.fixture(scope="module")
def quickstart(quickstart_run) -> tuple[Path, subprocess.CompletedProcess]:
    return quickstart_run  # tests/integration/conftest.py: one run for every module that needs it


def test_prints_the_base_vs_tuned_table_and_a_demo_answer(quickstart):
    _, done = quickstart
    assert "json_exact" in done.stdout and "base" in done.stdout and "tuned" in done.stdout
    demo = next(line for line in done.stdout.splitlines() if line.strip().startswith("->"))
    assert json.loads(demo.split("->", 1)[1])["intent"] == "set_brightness"


def test_tuned_beats_base_by_the_promised_margin(quickstart):
    run, _ = quickstart
    results = json.loads((run / "eval" / "results.json").read_text())
    assert results["n"] == 60
    assert results["tuned"]["json_exact"] >= 0.8
    assert results["base"]["json_exact"] <= 0.2
    samples = [json.loads(line) for line in (run / "eval" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 60 and all({"prompt", "reference", "base", "tuned"} <= set(s) for s in samples)


def test_training_loss_falls(quickstart):
    run, _ = quickstart
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [s["loss"] for s in steps if "loss" in s]
    assert len(losses) >= 20
    assert sum(losses[-5:]) / 5 < 0.25 * sum(losses[:5]) / 5
    assert any("eval_loss" in s for s in steps)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "completed" and "adapter/adapter_model.safetensors" in manifest["artifacts"]


def test_report_shows_the_eval_table_and_no_overfitting_warning(quickstart):
    run, _ = quickstart
    html = (run / "report.html").read_text(encoding="utf-8")
    assert (run / "loss.png").is_file() and 'id="eval-table"' in html and 'data-metric="json_exact"' in html
    assert 'data-kind="overfitting"' not in html and "overfitting:" not in html
    assert "report.html" in json.loads((run / "manifest.json").read_text())["artifacts"]


def test_new_requests_are_in_no_split():
    assert len(bundled_requests()) == 520  # 420 + 40 + 60 distinct requests: every file was read
    for request in NEW_REQUESTS:
        assert in_no_split(request), f"{request!r} is in the bundled data: the chat tests would check recall"


def test_in_no_split_catches_a_training_row_however_it_is_written(monkeypatch):
    """The check above is not vacuous: with a train row among the requests (in any case and punctuation,
    with or without "please") it fails."""
    row = json.loads((BUNDLED / "train.jsonl").read_text(encoding="utf-8").splitlines()[25])
    request = row["messages"][1]["content"]  # "could you unlock the garage door please?", the old NEW_REQUEST
    for copy in (request, "  " + request.upper().rstrip("?") + "!", request.removesuffix(" please?")):
        assert not in_no_split(copy), copy
        monkeypatch.setitem(NEW_REQUESTS, copy, json.loads(row["messages"][2]["content"]))
        with pytest.raises(AssertionError, match="is in the bundled data"):
            test_new_requests_are_in_no_split()
        monkeypatch.undo()
    test_new_requests_are_in_no_split()  # and NEW_REQUESTS itself is back as it was


@pytest.mark.parametrize("request_text", list(NEW_REQUESTS))
def test_chat_answers_a_new_request_with_valid_json(quickstart, request_text):
    run, _ = quickstart
    done = tunesmith("chat", str(run), "--max-new-tokens", "200", stdin=request_text + "\n")
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout.strip())  # nothing before or after the object: it stopped
    assert answer == NEW_REQUESTS[request_text]


def test_adapter_loads_with_plain_peft_and_stops_at_end_of_turn(quickstart):
    run, _ = quickstart
    base_dir = ensure_embedded_model("smollm2-135m-instruct")
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    model = PeftModel.from_pretrained(base, run / "adapter")
    tokenizer = AutoTokenizer.from_pretrained(run / "adapter")
    system = json.loads((run / "adapter" / "tunesmith.json").read_text())["system_prompt"]
    for request, expected in NEW_REQUESTS.items():
        messages = [{"role": "system", "content": system}, {"role": "user", "content": request}]
        inputs = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_dict=True, return_tensors="pt"
        )
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=200, do_sample=False)
        new = out[0, inputs["input_ids"].shape[1] :]
        assert new[-1].item() == tokenizer.convert_tokens_to_ids("<|im_end|>") and len(new) < 200, request
        answer = json.loads(tokenizer.decode(new, skip_special_tokens=True))
        assert answer == expected, request


def test_eval_of_the_finished_run_matches_the_quick_start(quickstart):
    """`tunesmith eval` on the run reproduces the quick start's accuracy (greedy decoding, the same
    template and prompts), adds loss/perplexity, and the tuned model's loss is below the base's."""
    run, _ = quickstart
    before = json.loads((run / "eval" / "results.json").read_text())
    done = tunesmith("eval", str(run))
    assert done.returncode == 0, done.stderr[-3000:]
    after = json.loads((run / "eval" / "results.json").read_text())
    for model in ("base", "tuned"):
        assert after[model]["json_exact"] == pytest.approx(before[model]["json_exact"], abs=2 / 60)
    assert after["tuned"]["loss"] < after["base"]["loss"]
    assert after["difference"]["json_exact"] == pytest.approx(
        after["tuned"]["json_exact"] - after["base"]["json_exact"]
    )
    assert (run / "report.html").is_file()
