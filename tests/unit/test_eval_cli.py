"""`tunesmith eval`, `generate` and `chat` on a tiny trained run (and on a base model folder alone)."""

from __future__ import annotations

import io
import json

import pytest

import tunesmith
from tunesmith.cli.main import main
from tunesmith.config import load_config


def _rows(n: int) -> list[dict]:
    return [
        {
            "id": f"r{i}",
            "messages": [
                {"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": f"What is {i} plus {i}?"},
                {"role": "assistant", "content": f"{i + i}"},
            ],
        }
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def tiny_run(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("eval-run")
    data = root / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _rows(8)), encoding="utf-8")
    config = load_config(
        None,
        [
            f"data.train={data}",
            f"data.test={data}",
            f"model.name={tiny_model_dir}",
            f"output_dir={root / 'runs'}",
            "name=tiny",
            "train.max_steps=3",
            "train.packing=bins",
            "train.batch_size=4",
            "train.learning_rate=5e-2",
            "lora.r=4",
            "eval.limit=2",
            "eval.max_new_tokens=3",
            "eval.metrics=[exact,normalized,rouge_l]",
        ],
    )
    return tunesmith.train(config).run_dir, data


def test_training_records_loss_and_perplexity_for_tuned_and_base(tiny_run):
    run_dir, _ = tiny_run
    results = json.loads((run_dir / "eval" / "results.json").read_text())
    for model in ("tuned", "base"):
        assert results[model]["loss"] > 0
        assert results[model]["perplexity"] == pytest.approx(2.718281828 ** results[model]["loss"], rel=1e-4)
        assert results[model]["loss_tokens"] > 0
    assert results["tuned"]["loss"] != results["base"]["loss"]  # the adapter trained
    assert results["difference"]["loss"] == pytest.approx(results["tuned"]["loss"] - results["base"]["loss"], abs=1e-5)
    assert set(results["difference"]) == {"exact", "normalized", "rouge_l", "loss", "perplexity"}


def test_eval_cli_data_limit_and_base_flags(tiny_run, tiny_model_dir, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from tunesmith.evaluate.generate import read_prompt_rows
    from tunesmith.evaluate.loss import encode_for_loss, split_loss
    from tunesmith.evaluate.runs import load_run

    run_dir, _ = tiny_run
    other = tmp_path / "other.jsonl"  # sharegpt this time: any supported format
    other.write_text(
        "".join(
            json.dumps({"conversations": [{"from": "human", "value": f"Say {w}"}, {"from": "gpt", "value": w}]}) + "\n"
            for w in ("yes", "no", "maybe")
        ),
        encoding="utf-8",
    )
    assert main(["eval", str(run_dir), "--data", str(other), "--limit", "2", "--base"]) == 0
    results = json.loads((run_dir / "eval" / "results.json").read_text())
    samples = [json.loads(line) for line in (run_dir / "eval" / "samples.jsonl").read_text().splitlines()]
    assert results["n"] == 2 and len(samples) == 2
    assert samples[0]["reference"] == "yes" and "Say yes" in samples[0]["prompt"]
    assert set(samples[0]) >= {"prompt", "reference", "base", "tuned", "base_scores", "tuned_scores"}
    # loss covers all 3 rows; the base loss is the plain base model's (adapter disabled)
    run = load_run(run_dir)
    rows = read_prompt_rows(str(other))
    examples = encode_for_loss(
        rows, run.template, run.tokenizer, train_on="assistant", max_length=1024, markers=run.record.end_of_turn
    )
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    assert results["base"]["loss"] == pytest.approx(split_loss(base, examples)["loss"], rel=1e-4)
    assert results["tuned"]["loss_tokens"] == sum(e.n_trainable for e in examples)

    assert main(["eval", str(run_dir), "--data", str(other), "--limit", "1", "--no-base"]) == 0
    results = json.loads((run_dir / "eval" / "results.json").read_text())
    assert "base" not in results and "difference" not in results and results["n"] == 1
    _assert_manifest_verifies(run_dir)  # eval rewrote eval/ and report.html: the hashes were taken again


def _assert_manifest_verifies(run_dir):
    from tunesmith.runfolder import sha256_file

    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["artifacts"]
    assert {"eval/results.json", "report.html"} <= set(manifest["artifacts"])
    for name, digest in manifest["artifacts"].items():
        assert sha256_file(run_dir / name) == digest, name


def test_eval_user_metric_import_error_is_one_line(tiny_run, capsys):
    run_dir, data = tiny_run
    config = run_dir / "config.yaml"
    original = config.read_text()
    try:
        config.write_text(original.replace("- rouge_l", "- rouge_l\n  - missing_mod_abc:score"))
        assert "missing_mod_abc" in config.read_text()
        assert main(["eval", str(run_dir), "--limit", "1"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: eval.metrics: missing_mod_abc:score") and "\n" not in err
    finally:
        config.write_text(original)


def _prompt_file(tmp_path):
    path = tmp_path / "in.jsonl"
    rows = [
        {
            "id": "ends-with-answer",
            "messages": [{"role": "user", "content": "Name a color."}, {"role": "assistant", "content": "Blue."}],
        },
        {"id": "ends-with-user", "messages": [{"role": "user", "content": "Name a color."}]},
        {
            "id": "multi",
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello"},
                {"role": "user", "content": "Count to three."},
            ],
        },
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize("which", ["run", "base_folder"])
def test_generate_writes_one_answer_per_row(tiny_run, tiny_model_dir, tmp_path, which):
    target = tiny_run[0] if which == "run" else tiny_model_dir
    out = tmp_path / "sub" / "out.jsonl"
    assert (
        main(
            [
                "generate",
                str(target),
                str(_prompt_file(tmp_path)),
                str(out),
                "--max-new-tokens",
                "5",
                "--batch-size",
                "2",
            ]
        )
        == 0
    )
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(w["id"], w["line"]) for w in written] == [("ends-with-answer", 1), ("ends-with-user", 2), ("multi", 3)]
    assert all(isinstance(w["answer"], str) for w in written)
    if which == "run":  # the trained run answers with text (the random base emits only special tokens)
        assert written[0]["answer"]
    # the first row's prompt drops its last assistant turn: the same prompt as the second row
    assert written[0]["answer"] == written[1]["answer"]
    assert [p.name for p in out.parent.iterdir()] == ["out.jsonl"]  # no temporary file left


def test_generate_bad_input_fails_before_loading(tiny_model_dir, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\nnot json\n', encoding="utf-8")
    assert main(["generate", str(tiny_model_dir), str(bad), str(tmp_path / "o.jsonl")]) == 2
    assert ":2" in capsys.readouterr().err and not (tmp_path / "o.jsonl").exists()


def test_chat_is_multi_turn_streams_and_takes_a_system_prompt(tiny_run, capsys):
    from rich.console import Console

    from tunesmith.evaluate.chat import answer_once, chat

    run_dir, _ = tiny_run
    history = chat(
        run_dir,
        console=Console(),
        system="Be terse.",
        max_new_tokens=4,
        stdin=io.StringIO("What is 1 plus 1?\n\nAnd 2 plus 2?\n/exit\nnever read\n"),
    )
    assert [m["role"] for m in history] == ["system", "user", "assistant", "user", "assistant"]
    assert history[0]["content"] == "Be terse." and history[3]["content"] == "And 2 plus 2?"
    streamed = capsys.readouterr().out
    assert history[2]["content"] in streamed and history[4]["content"] in streamed
    # the first streamed reply is the greedy answer to the same prompt
    assert history[2]["content"] == answer_once(run_dir, "What is 1 plus 1?", system="Be terse.", max_new_tokens=4)
    default = chat(run_dir, console=Console(), max_new_tokens=2, stdin=io.StringIO("hi\n"))
    assert default[0] == {"role": "system", "content": "Answer briefly."}  # the training rows' shared prompt


def test_chat_cli_on_a_base_model_folder(tiny_model_dir, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("hello\nagain\n"))
    assert main(["chat", str(tiny_model_dir), "--system", "Be kind.", "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out.count("\n") >= 2  # one streamed reply per message
