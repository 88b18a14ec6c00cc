"""`tunesmith data check|stats|convert|split` through the real entry point, in process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tunesmith.cli.main import main
from tunesmith.data.check import FileStream
from tunesmith.data.keys import content_key
from tunesmith.data.options import FormatOptions


def chat(i: int, role: str = "assistant") -> dict:
    return {"messages": [{"role": "user", "content": f"What is {i} plus {i}?"}, {"role": role, "content": str(2 * i)}]}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture()
def bad_file(tmp_path) -> Path:
    rows = [chat(i) for i in range(100)]
    rows[56] = chat(56, role="assistent")
    return write_jsonl(tmp_path / "train.jsonl", rows)


def test_check_names_the_bad_row_and_exits_2(bad_file, capsys):
    assert main(["data", "check", str(bad_file)]) == 2
    out = capsys.readouterr().out
    assert f"{bad_file}:57: messages[1].role: unknown role 'assistent'" in out
    assert f"{bad_file}: messages (key messages)" in out
    assert "1 error, 0 warnings" in out and "No token statistics" in out


def test_check_exits_0_on_clean_data(tmp_path, capsys):
    path = write_jsonl(tmp_path / "ok.jsonl", [chat(i) for i in range(10)])
    assert main(["data", "check", str(path)]) == 0
    assert "0 errors, 0 warnings: OK to train" in capsys.readouterr().out


def test_check_writes_the_full_report_and_shows_only_the_first_issues(tmp_path, capsys):
    rows = [chat(i, role="bot") for i in range(30)]
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    report = tmp_path / "out" / "report.json"
    report.parent.mkdir()
    assert main(["data", "check", str(path), "--report", str(report)]) == 2
    out = capsys.readouterr().out
    assert out.count("unknown role 'bot'") == 20 and f"10 more in {report}" in out
    data = json.loads(report.read_text(encoding="utf-8"))
    assert [(i["line"], i["field"], i["code"]) for i in data["issues"]] == [
        (n, "messages[1].role", "unknown_role") for n in range(1, 31)
    ]
    assert data["counts"] == {"error": 30, "warning": 0} and data["files"][0]["rows"] == 30


def test_fail_on_warning_turns_a_warnings_only_file_into_exit_2(tmp_path, capsys):
    path = write_jsonl(tmp_path / "dups.jsonl", [chat(1), chat(2), chat(1)])
    assert main(["data", "check", str(path)]) == 0
    assert main(["data", "check", str(path), "--fail-on", "warning"]) == 2
    assert f"{path}:3: duplicate of {path}:1" in capsys.readouterr().out


def test_check_with_a_model_prints_token_stats(tmp_path, capsys, smol_tokenizer_dir):
    """`--model` as a folder: the embedded SmolLM2's tokenizer without its weights (tests/fixtures/tokenizers)."""
    model = str(smol_tokenizer_dir)
    path = write_jsonl(tmp_path / "ok.jsonl", [chat(i) for i in range(10)])
    assert main(["data", "check", str(path), "--model", model]) == 0
    out = capsys.readouterr().out
    assert f"Tokens ({model}):" in out and "Over max_length 1024: 0 rows" in out
    # So short a max_length cuts every answer away: each row would train nothing.
    assert main(["data", "check", str(path), "--model", model, "--max-length", "16"]) == 2
    out = capsys.readouterr().out
    assert "Over max_length 16: 10 rows" in out and f"{path}:1: " in out and "every trained token" in out


@pytest.mark.integration
def test_check_with_the_embedded_model_by_name_prints_token_stats(tmp_path, capsys):
    """`--model smollm2-135m-instruct` resolves through the embedded model's cache (converted once)."""
    path = write_jsonl(tmp_path / "ok.jsonl", [chat(i) for i in range(10)])
    assert main(["data", "check", str(path), "--model", "smollm2-135m-instruct"]) == 0
    out = capsys.readouterr().out
    assert "Tokens (smollm2-135m-instruct):" in out and "Over max_length 1024: 0 rows" in out


def test_an_unknown_format_name_is_a_user_error(tmp_path, capsys):
    path = write_jsonl(tmp_path / "ok.jsonl", [chat(1)])
    assert main(["data", "check", str(path), "--format", "chatml"]) == 2
    assert "unknown format 'chatml'" in capsys.readouterr().err


def test_a_missing_file_is_a_user_error(tmp_path, capsys):
    assert main(["data", "check", str(tmp_path / "nope.jsonl")]) == 2
    assert "data file not found" in capsys.readouterr().err


def test_convert_alpaca_to_messages(tmp_path, capsys):
    source = write_jsonl(
        tmp_path / "alpaca.jsonl",
        [
            {"instruction": "Translate.", "input": "Bonjour", "output": "Hello"},
            {"instruction": "Say hi", "input": "", "output": "hi", "system": "Be nice."},
        ],
    )
    out = tmp_path / "out.jsonl"
    assert main(["data", "convert", str(source), "-o", str(out)]) == 0
    assert read_jsonl(out) == [
        {"messages": [{"role": "user", "content": "Translate.\n\nBonjour"}, {"role": "assistant", "content": "Hello"}]},
        {
            "messages": [
                {"role": "system", "content": "Be nice."},
                {"role": "user", "content": "Say hi"},
                {"role": "assistant", "content": "hi"},
            ]
        },
    ]
    assert "Wrote 2 of 2 rows" in capsys.readouterr().out


def test_convert_keeps_weights_tool_calls_names_and_ids(tmp_path):
    row = {
        "id": "r1",
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}],
        "messages": [
            {"role": "user", "content": "Weather?"},
            {
                "role": "assistant",
                "content": None,
                "weight": 1,
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
                    }
                ],
            },
            {"role": "tool", "content": "18C", "name": "get_weather", "tool_call_id": "c1"},
            {"role": "assistant", "content": "18C.", "weight": 0},
            {"role": "user", "content": "ok"},
            {"role": "assistant", "content": "Bye."},
        ],
    }
    source = write_jsonl(tmp_path / "tools.jsonl", [row, {"text": "plain"}])
    text = write_jsonl(tmp_path / "text.jsonl", [{"text": "plain", "id": 7}])
    tokens = write_jsonl(tmp_path / "tokens.jsonl", [{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}])
    out = tmp_path / "out.jsonl"
    assert main(["data", "convert", str(source), str(text), str(tokens), "-o", str(out), "--skip-bad"]) == 0
    written = read_jsonl(out)
    assert written[0]["messages"][1] == {
        "role": "assistant",
        "content": "",
        "weight": 1,
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
        ],
    }
    assert written[0]["messages"][2] == row["messages"][2] and written[0]["id"] == "r1"
    assert written[0]["tools"] == row["tools"] and written[0]["messages"][3]["weight"] == 0
    assert written[1:] == [{"text": "plain", "id": "7"}, {"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}]
    # Reading the output back gives the same samples.
    before = [
        content_key(s)
        for ref in (source, text, tokens)
        for _, s, _ in FileStream(str(ref), FormatOptions())
        if s is not None
    ]
    after = []
    for line, row_ in enumerate(written, start=1):
        single = write_jsonl(tmp_path / f"back{line}.jsonl", [row_])
        after += [content_key(s) for _, s, _ in FileStream(str(single), FormatOptions())]
    assert before == after


def test_convert_with_bad_rows_exits_2_and_writes_nothing(bad_file, tmp_path, capsys):
    out = tmp_path / "out.jsonl"
    assert main(["data", "convert", str(bad_file), "-o", str(out)]) == 2
    assert not out.exists() and list(tmp_path.iterdir()) == [bad_file]  # no temporary file left either
    assert f"{bad_file}:57: messages[1].role" in capsys.readouterr().out
    assert main(["data", "convert", str(bad_file), "-o", str(out), "--skip-bad"]) == 0
    assert len(read_jsonl(out)) == 99


def split_contents(folder: Path) -> dict[str, list[str]]:
    return {
        name: [json.dumps(r) for r in read_jsonl(folder / f"{name}.jsonl")] for name in ("train", "validation", "test")
    }


def test_split_is_deterministic_and_stable_as_rows_are_added(tmp_path, capsys):
    rows = [chat(i) for i in range(400)]
    small = write_jsonl(tmp_path / "small.jsonl", rows)
    large = write_jsonl(tmp_path / "large.jsonl", rows + [chat(i) for i in range(400, 1000)])
    args = ["--validation", "0.1", "--test", "0.2"]
    for name, source in (("a", small), ("b", small), ("c", large)):
        assert main(["data", "split", str(source), "--out", str(tmp_path / name), *args]) == 0
    first, again, grown = (split_contents(tmp_path / n) for n in "abc")
    assert first == again
    where = {row: name for name, rows_ in grown.items() for row in rows_}
    assert all(where[row] == name for name, rows_ in first.items() for row in rows_)
    assert 0.15 < len(grown["test"]) / 1000 < 0.25 and 0.05 < len(grown["validation"]) / 1000 < 0.15
    assert sum(map(len, first.values())) == 400
    assert "train.jsonl: " in capsys.readouterr().out


def test_split_puts_duplicates_in_one_split_and_seed_changes_it(tmp_path):
    rows = [chat(i) for i in range(200)] * 2 + [
        {"messages": [{"role": "user", "content": "WHAT is 5 plus 5"}, {"role": "assistant", "content": "10!"}]}
    ]
    source = write_jsonl(tmp_path / "d.jsonl", rows)
    assert main(["data", "split", str(source), "--out", str(tmp_path / "s"), "--test", "0.3"]) == 0
    parts = split_contents(tmp_path / "s")
    assert parts["validation"] and all(
        parts[name].count(row) == 2 for name in parts for row in parts[name][:-1] if "WHAT" not in row
    )
    near = next(name for name in parts for row in parts[name] if "WHAT" in row)
    assert json.dumps(chat(5)) in parts[near]
    assert main(["data", "split", str(source), "--out", str(tmp_path / "t"), "--test", "0.3", "--seed", "x"]) == 0
    assert split_contents(tmp_path / "t") != parts


def test_split_rejects_fractions_that_leave_no_train(tmp_path, capsys):
    source = write_jsonl(tmp_path / "d.jsonl", [chat(1)])
    assert (
        main(["data", "split", str(source), "--out", str(tmp_path / "s"), "--validation", "0.5", "--test", "0.5"]) == 2
    )
    assert "leave nothing for train" in capsys.readouterr().err and not (tmp_path / "s").exists()


def test_stats_json(tmp_path, capsys):
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [chat(i) for i in range(5)]
        + [
            {
                "messages": [
                    {"role": "system", "content": "x"},
                    {"role": "user", "content": "y"},
                    {"role": "assistant", "content": "z"},
                ]
            }
        ],
    )
    assert main(["data", "stats", str(path), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert (stats["rows"], stats["valid_rows"], stats["rows_by_format"]) == (6, 6, {"messages": 6})
    assert stats["messages_by_role"] == {"user": 6, "assistant": 6, "system": 1}
    assert (stats["turns_max"], stats["turns_mean"], stats["tokens"]) == (3, round(13 / 6, 3), None)


def test_stats_json_with_tokens(tmp_path, capsys, smol_tokenizer_dir):
    path = write_jsonl(tmp_path / "d.jsonl", [chat(i) for i in range(5)])
    assert main(["data", "stats", str(path), "--json", "--model", str(smol_tokenizer_dir)]) == 0
    tokens = json.loads(capsys.readouterr().out)["tokens"]
    assert tokens["rows"] == 5 and 0 < tokens["trainable_share"] < 1 and tokens["p50"] <= tokens["max"]


@pytest.mark.parametrize("command", ["check", "stats", "convert", "split"])
def test_every_data_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["data", command, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: tunesmith data {command}" in capsys.readouterr().out


def test_data_check_help_imports_no_torch():
    code = (
        "import sys, time; t = time.perf_counter(); from tunesmith.cli.main import main\n"
        "try:\n    main(['data', 'check', '--help'])\nexcept SystemExit:\n    pass\n"
        "print(time.perf_counter() - t, 'torch' in sys.modules, 'transformers' in sys.modules, file=sys.stderr)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    seconds, torch_loaded, transformers_loaded = done.stderr.split()
    assert (torch_loaded, transformers_loaded) == ("False", "False")  # what keeps --help instant
    assert float(seconds) < 30  # a cap that catches a hang, not a speed claim (speed lives in bench/)


def test_check_reports_test_rows_that_are_also_in_train(tmp_path, capsys):
    train = write_jsonl(tmp_path / "train.jsonl", [chat(i) for i in range(5)])
    test = write_jsonl(tmp_path / "test.jsonl", [chat(7), chat(2)])
    assert main(["data", "check", str(train), "--test", str(test)]) == 0
    out = capsys.readouterr().out
    assert f"{test}:2: also in the training data at {train}:3" in out and "0 errors, 1 warning" in out


def test_the_help_lists_exactly_the_known_formats():
    from tunesmith.cli.data import FORMAT_NAMES
    from tunesmith.data.options import FORMATS

    assert FORMAT_NAMES.split(", ") == ["auto", *FORMATS]
