"""Issue 17's command-line papercuts: a data file where a config goes, `train --data/--model`, the progress
bar's loss, `--help` texts and `train --help-config`."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from types import SimpleNamespace

import pytest
import yaml

from tunesmith.cli.main import main
from tunesmith.config.help import config_fields, default_text
from tunesmith.config.schema import Config, ModelConfig


def run_cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tunesmith", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def one_error_line(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


CHAT_ROWS = [
    {"messages": [{"role": "user", "content": f"What is {i} plus {i}?"}, {"role": "assistant", "content": f"{i + i}"}]}
    for i in range(12)
]


# --- 6. a data file passed as the config ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "body", "expected"),
    [
        ("data.jsonl", "".join(json.dumps(r) + "\n" for r in CHAT_ROWS), "12 rows of format messages: key messages"),
        ("data.json", json.dumps(CHAT_ROWS, indent=2), "12 rows of format messages: key messages"),
        (
            "pairs.csv",
            "instruction,output\nhello,hi\nbye,ciao\n",
            "2 rows of format alpaca: keys instruction and output",
        ),
    ],
)
def test_a_data_file_as_config_says_so_and_how_to_train_on_it(tmp_path, name, body, expected):
    (tmp_path / name).write_text(body, encoding="utf-8")
    line = one_error_line(run_cli("train", name, cwd=tmp_path))
    assert f"{name} looks like a data file ({expected}), not a config" in line, line
    assert f"tunesmith train --data {name} --model NAME" in line
    assert "invalid YAML" not in line and "must be a mapping" not in line


def test_a_big_data_file_is_counted_only_so_far(tmp_path, monkeypatch, capsys):
    import tunesmith.cli.common as common

    monkeypatch.setattr(common, "COUNT_CAP", 5)
    (tmp_path / "big.jsonl").write_text("".join(json.dumps(r) + "\n" for r in CHAT_ROWS), encoding="utf-8")
    assert main(["train", str(tmp_path / "big.jsonl")]) == 2
    assert "(at least 5 rows of format messages: key messages)" in capsys.readouterr().err


def test_a_config_written_as_json_is_still_read_as_a_config(tmp_path, chat_jsonl):
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"data": {"train": str(chat_jsonl)}, "train": {"epochz": 1}}), encoding="utf-8")
    line = one_error_line(run_cli("train", str(config), cwd=tmp_path))
    assert "train.epochz: unknown key" in line and "data file" not in line


def test_train_needs_a_config_or_data(tmp_path):
    line = one_error_line(run_cli("train", cwd=tmp_path))
    assert "give a CONFIG file, or --data FILE" in line


def test_data_and_model_flags_resolve_the_config_without_a_file(tmp_path, monkeypatch, chat_jsonl, tiny_model_dir):
    """`tunesmith train --data FILE --model DIR --set ...`, no config file: one step on the tiny model."""
    monkeypatch.chdir(tmp_path)
    code = main(
        [
            "train",
            "--data",
            str(chat_jsonl),
            "--model",
            str(tiny_model_dir),
            "--set",
            "train.max_steps=1",
            "--set",
            "train.batch_size=2",
            "--set",
            "lora.r=2",
            "--set",
            f"output_dir={tmp_path / 'runs'}",
        ]
    )
    assert code == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert re.fullmatch(r"chat-\d{8}-\d{6}", run_dir.name)  # named after the data file
    saved = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    assert saved["data"]["train"] == str(chat_jsonl) and saved["model"]["name"] == str(tiny_model_dir)
    assert saved["train"]["max_steps"] == 1 and saved["lora"]["r"] == 2
    assert saved["train"]["epochs"] == 1.0  # everything else at its default
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps if "loss" in s] == [1]


def test_data_flag_errors_name_the_flag(tmp_path):
    line = one_error_line(run_cli("train", "--data", "missing.jsonl", cwd=tmp_path))
    assert line == "error: --data missing.jsonl: data.train: data file not found: missing.jsonl", line
    assert not (tmp_path / "runs").exists()


def test_data_flag_is_a_path_whatever_yaml_makes_of_it_and_model_defaults_to_the_embedded_one():
    from argparse import Namespace

    from tunesmith.cli.train import _resolve_config

    args = Namespace(config=None, data="2024: notes.jsonl", model=None, overrides=["train.epochs=2"], resume=False)
    config = _resolve_config(args)
    assert config.data.train == "2024: notes.jsonl" and config.model.name == ModelConfig().name
    assert config.origin("data.train") == "--data 2024: notes.jsonl" and config.train.epochs == 2
    assert config.name.startswith("2024-notes-")


def test_the_documented_default_model_is_the_schemas():
    from tunesmith.cli.train import DEFAULT_MODEL

    assert DEFAULT_MODEL == ModelConfig().name


# --- 7. the progress bar's loss ---------------------------------------------------------------------------


def test_progress_bar_shows_each_steps_own_loss():
    """The Trainer's order per step: on_step_end (global_step = N), then on_log with step N's loss."""
    from rich.console import Console

    from tunesmith.training.callbacks import ProgressBar

    bar = ProgressBar(Console(file=io.StringIO(), force_terminal=False))
    state = SimpleNamespace(max_steps=4, global_step=0, num_input_tokens_seen=0, is_world_process_zero=True)
    bar.on_train_begin(None, state, None)
    shown = []
    for step, loss in enumerate([4.0, 3.0, 2.0, 1.0], start=1):
        state.global_step, state.num_input_tokens_seen = step, 100 * step
        bar.on_step_end(None, state, None)
        bar.on_log(None, state, None, logs={"loss": loss, "learning_rate": 1e-4})
        task = bar.progress.tasks[0]
        shown.append((int(task.completed), task.fields["loss"]))
    bar.on_log(None, state, None, logs={"eval_loss": 9.0})  # an evaluation leaves the training loss alone
    bar.on_train_end(None, state, None)
    assert shown == [(1, "4.000"), (2, "3.000"), (3, "2.000"), (4, "1.000")]
    assert bar.progress.tasks[0].fields["loss"] == "1.000"


# --- 8. --help texts and train --help-config --------------------------------------------------------------


def option_help(verb: str, option: str, capsys) -> str:
    """The description `tunesmith VERB --help` prints for `option`."""
    with pytest.raises(SystemExit) as exit_info:
        main([verb, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    match = re.search(rf"^  {re.escape(option)}(?: [A-Z_]+)?(.*(?:\n {{6,}}\S.*)*)", text, re.MULTILINE)
    assert match, text
    return " ".join(match.group(1).split())


@pytest.mark.parametrize(
    ("verb", "option"),
    [
        ("chat", "--max-new-tokens"),
        ("generate", "--max-new-tokens"),
        ("generate", "--batch-size"),
        ("train", "--help-config"),
        ("train", "--data"),
        ("train", "--model"),
    ],
)
def test_options_are_described(verb, option, capsys):
    assert len(option_help(verb, option, capsys)) > 20


def test_help_config_lists_every_key_with_its_type_default_and_reason(tmp_path):
    done = run_cli("train", "--help-config", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    heads = {
        line.partition(":")[0]: (line, lines[i + 1])
        for i, line in enumerate(lines)
        if line and not line.startswith(" ") and ": " in line and " = " in line
    }
    keys = [key for key, _ in config_fields()]
    assert len(keys) > 50 and "train.epochs" in keys and "data.train" in keys and "model" not in keys
    for key, field in config_fields():
        head, reason = heads[key]
        assert head.endswith(f" = {default_text(field)}"), head
        assert reason.startswith("    ") and len(reason.strip()) > 10, (key, reason)
    assert heads["train.epochs"][0] == "train.epochs: float | null = null"  # null: chosen from the data
    assert heads["train.warmup_ratio"][0] == "train.warmup_ratio: float = 0.05"
    assert heads["train.max_steps"][0] == "train.max_steps: int | null = null"
    assert heads["data.train"][0].endswith("= required")
    assert heads["model.dtype"][0] == 'model.dtype: auto|float32|bfloat16|float16 = "auto"'
    assert heads["model.dtype"][1].strip() == (
        "Weight dtype at load. `auto`: bfloat16 on a GPU that supports it, float32 on CPU."
    )
    assert heads["data.columns"][1].strip() == (
        "Your column names for the canonical ones, e.g. {instruction: task, output: answer}."
    )  # "e.g." ends no sentence
    assert not (tmp_path / "runs").exists()


def test_help_config_defaults_are_the_schemas():
    defaults = Config.model_validate({"data": {"train": "x.jsonl"}}).model_dump(mode="json")
    for key, field in config_fields():
        if key == "data.train":
            continue
        value = defaults
        for part in key.split("."):
            value = value[part]
        assert json.loads(default_text(field)) == value, key


def test_inspect_names_a_data_file_passed_as_its_config(tmp_path, capsys):
    import json

    from tunesmith.cli.main import main

    data = tmp_path / "chats.jsonl"
    data.write_text(
        json.dumps({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}) + "\n",
        encoding="utf-8",
    )
    assert main(["inspect", str(data)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "looks like a data file (1 row of format messages" in err


def test_an_optional_librarys_import_warning_does_not_reach_stderr(tmp_path):
    """Issue 18.9: bitsandbytes warns through logging when imported on an AVX-512 BF16 CPU; with nothing
    configured, logging's last resort prints it, making a one-line error two lines. In a fresh process
    (pytest's own log handlers would hide it), a fake bitsandbytes that warns the same way on import is
    imported, as peft imports the real one, after the CLI starts a command that fails."""
    import subprocess
    import sys

    fake = tmp_path / "site" / "bitsandbytes"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(
        "import logging\nlogging.getLogger('bitsandbytes.backends.cpu.ops').warning("
        "'Failed to load CPU gemm_4bit_forward from kernels-community: no kernels')\n",
        encoding="utf-8",
    )
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import tunesmith.cli.main as cli\n"
        "import tunesmith.cli.data as data\n"
        "real = data.run_check\n"
        "def check(args):\n    import bitsandbytes\n    return real(args)\n"
        "data.run_check = check\n"
        "sys.exit(cli.main(['data', 'check', sys.argv[2]]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "site"), str(tmp_path / "missing.jsonl")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "gemm_4bit_forward" not in done.stderr
