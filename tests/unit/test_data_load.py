"""Loading a split for training: mixing by weight, the bad-row policy, and stopping before the model."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tunesmith.data.load import SourceSpec, load_split
from tunesmith.data.options import FormatOptions
from tunesmith.errors import UserError


def chat_row(i: int) -> dict:
    return {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def with_bad_row_at(path, line: int, total: int) -> str:
    rows = [chat_row(i) for i in range(total)]
    rows[line - 1] = {"messages": [{"role": "user", "content": "x"}, {"role": "assistent", "content": "y"}]}
    return write_jsonl(path, rows)


def test_weights_repeat_and_subsample_deterministically(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [chat_row(i) for i in range(10)])
    b = write_jsonl(tmp_path / "b.jsonl", [{"instruction": f"i{i}", "output": f"o{i}"} for i in range(10)])
    specs = [SourceSpec(a, 2.0), SourceSpec(b, 0.3)]
    first = load_split(specs, split="train", policy="fail", seed=1)
    again = load_split(specs, split="train", policy="fail", seed=1)
    assert len(first.samples) == 23 and [f.used for f in first.files] == [20, 3]
    assert first.samples == again.samples
    assert [f.format for f in first.files] == ["messages", "alpaca"]


def test_fail_policy_names_the_first_bad_row_and_counts_all(tmp_path):
    path = with_bad_row_at(tmp_path / "d.jsonl", 57, 100)
    with pytest.raises(UserError) as err:
        load_split([SourceSpec(path)], split="train", policy="fail", seed=0)
    assert str(err.value).startswith(f"{path}:57: messages[1].role:")
    assert "1 bad train row" in str(err.value)


def test_skip_policy_quarantines_and_keeps_the_rest(tmp_path):
    path = with_bad_row_at(tmp_path / "d.jsonl", 5, 12)
    with (tmp_path / "d.jsonl").open("a") as handle:
        handle.write("{broken\n")
    loaded = load_split([SourceSpec(path)], split="train", policy="skip", seed=0)
    assert len(loaded.samples) == 11
    assert sorted(raw.where.line for raw, _ in loaded.quarantined) == [5, 13]


def test_format_option_overrides_detection(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [{"task": "t", "answer_text": "a"}])
    options = FormatOptions(format="qa", columns={"question": "task", "answer": "answer_text"})
    loaded = load_split([SourceSpec(path, 1.0, options)], split="train", policy="fail", seed=0)
    assert [m.content for m in loaded.samples[0].messages] == ["t", "a"]


def test_training_stops_on_line_57_before_any_model_is_fetched(tmp_path):
    """The model is an embedded one that cannot be fetched here: only the data check can speak."""
    data = with_bad_row_at(tmp_path / "train.jsonl", 57, 80)
    config = tmp_path / "run.yaml"
    config.write_text(f"data:\n  train: {data}\n", encoding="utf-8")
    env = {
        "TUNESMITH_CACHE": str(tmp_path / "empty-cache"),
        "TUNESMITH_EMBEDDED_WHEEL": str(tmp_path / "none.whl"),
        "HF_HUB_OFFLINE": "1",
        "PATH": "/usr/bin:/bin",
    }
    done = subprocess.run(
        [sys.executable, "-m", "tunesmith", "train", str(config), "--set", f"output_dir={tmp_path / 'runs'}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr
    assert f"{data}:57: messages[1].role: unknown role 'assistent'" in done.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "empty-cache" / "models").exists()
