"""Rows too long to train (issue 17, items 4 and 5): named as too long, handled by data.on_bad_row.

- A prompt longer than max_length trains nothing once cut: the run stops naming the row, the prompt's
  length and max_length (not the template), or with `on_bad_row: skip` leaves it out into
  quarantine.jsonl with that reason.
- A row far beyond any max_length (a million characters) is refused by `data check` even without a
  tokenizer, and training treats it as a bad row.
- `data check` without `--model` says which checks it did not run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunesmith.cli.main import main


def chat(question: str, answer: str = "4") -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture()
def long_prompt_data(tmp_path) -> Path:
    rows = [chat(f"What is {i} plus {i}?", str(2 * i)) for i in range(7)] + [chat(f"Where is {tmp_path}?")]
    rows.insert(3, chat("word " * 400))  # line 4: a prompt of ~400 tokens, max_length 64
    return write(tmp_path / "train.jsonl", rows)


def _train(tmp_path, model: Path, data: Path, *extra: str) -> list[str]:
    config = tmp_path / "run.yaml"
    config.write_text(
        f"model: {{name: {model}}}\ndata: {{train: {data}}}\ntemplate: {{max_length: 64}}\n"
        "train: {max_steps: 1, batch_size: 2}\nlora: {r: 2}\n",
        encoding="utf-8",
    )
    return ["train", str(config), "--set", f"output_dir={tmp_path / 'runs'}", "--set", "name=r", *extra]


def test_a_prompt_longer_than_max_length_stops_the_run_naming_the_row_and_lengths(
    tmp_path, tiny_model_dir, long_prompt_data, capsys
):
    code = main(_train(tmp_path, tiny_model_dir, long_prompt_data))
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert f"{long_prompt_data}:4: prompt is " in err and "tokens, max_length is 64" in err
    assert "data.on_bad_row: skip" in err and "template" not in err.split("max_length is 64")[0]
    assert not (tmp_path / "runs" / "r").exists()


def test_with_skip_the_long_prompt_goes_to_quarantine_with_its_reason(
    tmp_path, tiny_model_dir, long_prompt_data, capsys
):
    code = main(_train(tmp_path, tiny_model_dir, long_prompt_data, "--set", "data.on_bad_row=skip"))
    assert code == 0, capsys.readouterr().err
    [record] = [json.loads(line) for line in (tmp_path / "runs" / "r" / "quarantine.jsonl").read_text().splitlines()]
    assert (record["file"], record["line"], record["split"]) == (str(long_prompt_data), 4, "train")
    assert record["issues"][0]["code"] == "too_long"
    assert (
        record["issues"][0]["message"].startswith("prompt is ") and "max_length is 64" in record["issues"][0]["message"]
    )
    report = json.loads((tmp_path / "runs" / "r" / "data_report.json").read_text())
    assert report["splits"]["train"]["rows"] == 8 and report["splits"]["train"]["quarantined"] == 1


def test_a_huge_row_is_too_long_for_data_check_without_a_tokenizer(tmp_path, capsys):
    data = write(tmp_path / "d.jsonl", [chat("hi"), chat("x" * 1_000_001)])
    assert main(["data", "check", str(data)]) == 2
    out = " ".join(capsys.readouterr().out.split())
    assert f"{data}:2: messages: the row is 1,000,002 characters, far more than any max_length holds" in out
    assert "template" not in out.split(f"{data}:2:")[1].split("[error]")[0]


def test_data_check_without_a_model_says_what_it_did_not_check(tmp_path, capsys):
    data = write(tmp_path / "d.jsonl", [chat("hi"), chat("there")])
    assert main(["data", "check", str(data)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "OK to train as far as checked without --model (not checked: token counts against max_length" in out


def test_data_check_with_a_model_names_a_long_prompt_as_too_long(tmp_path, tiny_model_dir, long_prompt_data, capsys):
    assert main(["data", "check", str(long_prompt_data), "--model", str(tiny_model_dir), "--max-length", "64"]) == 2
    out = " ".join(capsys.readouterr().out.split())
    assert f"{long_prompt_data}:4: too long: " in out and "the prompt fills max_length" in out


def test_data_check_accepts_train_on_completion(tmp_path, capsys):
    data = write(tmp_path / "pc.jsonl", [{"prompt": "2+2?", "completion": "4"}])
    assert main(["data", "check", str(data), "--train-on", "completion"]) == 0
