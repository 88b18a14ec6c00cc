"""The command line: every verb's --help, no torch at start-up, bad input -> one line, exit 2, no run folder."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tunesmith.cli.main import build_parser, main

VERBS = [
    "train",
    "quickstart",
    "eval",
    "generate",
    "chat",
    "data",
    "inspect",
    "merge",
    "export",
    "push",
    "remote",
    "cloud",
    "plan",
    "doctor",
]


def run_cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tunesmith", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_has_help(verb, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([verb, "--help"])
    assert exit_info.value.code == 0
    assert "usage: tunesmith " + verb in capsys.readouterr().out


def test_parser_lists_exactly_the_implemented_verbs():
    subparsers = next(a for a in build_parser()._actions if a.dest == "verb")
    assert sorted(subparsers.choices) == sorted(VERBS)


def test_help_imports_no_torch():
    code = (
        "import sys, time; t = time.perf_counter(); from tunesmith.cli.main import main\n"
        "try:\n    main(['train', '--help'])\nexcept SystemExit:\n    pass\n"
        "print(time.perf_counter() - t, 'torch' in sys.modules, 'transformers' in sys.modules, file=sys.stderr)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    seconds, torch_loaded, transformers_loaded = done.stderr.split()
    assert (torch_loaded, transformers_loaded) == ("False", "False")  # what keeps --help instant
    assert float(seconds) < 30  # a cap that catches a hang, not a speed claim (speed lives in bench/)


def write_config(tmp_path, body: str):
    path = tmp_path / "run.yaml"
    path.write_text(body, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("body", "extra", "expected"),
    [
        (None, [], "config file not found"),
        ("data:\n  train: {data}\ntrain:\n  epochz: 1\n", [], "run.yaml:4: train.epochz: unknown key"),
        ("data:\n  train: {data}\ntrain:\n  epochs: many\n", [], "run.yaml:4: train.epochs:"),
        ("data:\n  train: {data}\n", ["--set", "lora.r=zero"], "--set lora.r=zero: lora.r:"),
        ("data:\n  train: missing.jsonl\n", [], "run.yaml:2: data.train: data file not found: missing.jsonl"),
        ("data:\n  train: {data}\n  test: gone.jsonl\n", [], "run.yaml:3: data.test: data file not found: gone.jsonl"),
        (
            "data:\n  train: {data}\nmodel:\n  name: nobody/no-such-model\n",
            [],
            "run.yaml:4: model.name: model 'nobody/no-such-model' is not a built-in name",
        ),
        ("data:\n  train: {data}\nmodel:\n  name: ./no/such/folder\n", [], "run.yaml:4: model.name: model not found"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_no_run_folder(tmp_path, chat_jsonl, body, extra, expected):
    config = tmp_path / "none.yaml" if body is None else write_config(tmp_path, body.format(data=chat_jsonl))
    done = run_cli("train", str(config), "--set", f"output_dir={tmp_path / 'runs'}", *extra, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], done.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_bad_data_row_names_file_line_and_field(tmp_path):
    data = tmp_path / "bad.jsonl"
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    bad = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistent", "content": "yo"}]}
    data.write_text(json.dumps(good) + "\n" + json.dumps(good) + "\n" + json.dumps(bad) + "\n", encoding="utf-8")
    config = write_config(tmp_path, f"data:\n  train: {data}\n")
    done = run_cli("train", str(config), "--set", f"output_dir={tmp_path / 'runs'}")
    assert done.returncode == 2
    assert f"{data}:3: messages[1].role: unknown role 'assistent'" in done.stderr
    assert not (tmp_path / "runs").exists()
