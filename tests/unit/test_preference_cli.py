"""Preference files through `tunesmith data check`, `convert` (normalized and --to together|openai)
and `split`: checked like chat rows, written in the providers' DPO format, split by prompt."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunesmith.cli.main import main


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def pair(i: int) -> dict:
    return {
        "prompt": [{"role": "system", "content": "Answer in JSON."}, {"role": "user", "content": f"dim to {i}"}],
        "chosen": [{"role": "assistant", "content": f'{{"level": {i}}}'}],
        "rejected": [{"role": "assistant", "content": f'Sure! {{"level": {i + 1}}}'}],
    }


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_data_check_reads_a_preference_file_and_names_bad_rows_by_line_and_field(tmp_path, capsys):
    rows = [pair(i) for i in range(4)]
    rows[1] = {**pair(1), "rejected": pair(1)["chosen"]}  # identical answers
    rows[3] = {**pair(3), "prompt": [{"role": "assistant", "content": "hi"}]}
    data = write_rows(tmp_path / "prefs.jsonl", rows)
    assert main(["data", "check", str(data)]) == 2
    out = " ".join(capsys.readouterr().out.split())
    assert "trl (keys prompt, chosen and rejected)" in out, out
    assert f"{data}:2: rejected: identical to chosen" in out, out
    assert f"{data}:4: prompt: the prompt must end on a user (or tool) turn" in out, out

    good = write_rows(tmp_path / "good.jsonl", [pair(i) for i in range(3)])
    assert main(["data", "check", str(good)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "OK as preference data" in out and "train.objective: dpo" in out, out


def test_supervised_training_data_still_refuses_preference_rows(tmp_path):
    from tunesmith.data.formats import load_conversations
    from tunesmith.errors import UserError

    data = write_rows(tmp_path / "prefs.jsonl", [pair(0)])
    with pytest.raises(UserError, match="preference data"):
        load_conversations(str(data))


@pytest.mark.parametrize("provider", ["together", "openai"])
def test_pairs_become_the_providers_dpo_rows(tmp_path, provider, capsys):
    data = write_rows(tmp_path / "prefs.jsonl", [pair(i) for i in range(12)])
    out = tmp_path / f"{provider}.jsonl"
    assert main(["data", "convert", str(data), "-o", str(out), "--to", provider]) == 0, capsys.readouterr()
    rows = read_jsonl(out)
    assert len(rows) == 12
    prompt = [{"role": "system", "content": "Answer in JSON."}, {"role": "user", "content": "dim to 5"}]
    assert rows[5] == {
        "input": {"messages": prompt},
        "preferred_output": [{"role": "assistant", "content": '{"level": 5}'}],
        "non_preferred_output": [{"role": "assistant", "content": 'Sure! {"level": 6}'}],
    }


def test_kto_rows_and_multi_message_answers_are_refused_for_the_providers_by_line_and_field(tmp_path, capsys):
    kto = write_rows(
        tmp_path / "kto.jsonl", [{"prompt": "dim", "completion": "x", "label": i % 2 == 0} for i in range(12)]
    )
    assert main(["data", "convert", str(kto), "-o", str(tmp_path / "k.jsonl"), "--to", "together"]) == 2
    assert f"{kto}:1: label: together has no format for unpaired rows (KTO)" in " ".join(
        capsys.readouterr().out.split()
    )
    assert not (tmp_path / "k.jsonl").exists()

    call = {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "dim", "arguments": "{}"}}]}
    rows = [pair(i) for i in range(12)]
    rows[2] = {**pair(2), "chosen": [call, {"role": "tool", "content": "ok"}, {"role": "assistant", "content": "done"}]}
    data = write_rows(tmp_path / "prefs.jsonl", rows)
    assert main(["data", "convert", str(data), "-o", str(tmp_path / "o.jsonl"), "--to", "openai"]) == 2
    assert f"{data}:3: chosen: openai's preference format takes one assistant message" in " ".join(
        capsys.readouterr().out.split()
    )


def test_normalized_preference_rows_read_back_as_the_same_pairs(tmp_path, capsys):
    from tunesmith.data.preference import detect_preference_format, to_preference
    from tunesmith.data.types import Provenance

    hh = [
        {"chosen": f"\n\nHuman: dim to {i}\n\nAssistant: ok {i}", "rejected": f"\n\nHuman: dim to {i}\n\nAssistant: no"}
        for i in range(3)
    ]
    data = write_rows(tmp_path / "hh.jsonl", hh)
    out = tmp_path / "trl.jsonl"
    assert main(["data", "convert", str(data), "-o", str(out)]) == 0, capsys.readouterr()
    for i, (before, after) in enumerate(zip(hh, read_jsonl(out), strict=True)):
        where = Provenance("x", i + 1)
        original = to_preference(before, where, "hh")
        fmt, _ = detect_preference_format(after)
        again = to_preference(after, where, fmt)
        assert (again.prompt, again.chosen, again.rejected) == (original.prompt, original.chosen, original.rejected)


def test_a_chat_file_after_a_preference_file_is_refused_whole(tmp_path, capsys):
    prefs = write_rows(tmp_path / "prefs.jsonl", [pair(0)])
    chats = write_rows(
        tmp_path / "chats.jsonl",
        [{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}],
    )
    out = tmp_path / "both.jsonl"
    assert main(["data", "convert", str(prefs), str(chats), "-o", str(out)]) == 2
    assert "one output cannot hold both" in " ".join(capsys.readouterr().out.split())
    assert not out.exists()


def test_split_keeps_every_pair_for_one_prompt_on_one_side(tmp_path, capsys):
    rows = []
    for i in range(40):  # two pairs per prompt
        rows += [pair(i), {**pair(i), "rejected": [{"role": "assistant", "content": "I cannot help."}]}]
    data = write_rows(tmp_path / "prefs.jsonl", rows)
    out = tmp_path / "split"
    assert main(["data", "split", str(data), "--out", str(out), "--test", "0.3"]) == 0, capsys.readouterr()
    sides = {}
    for name in ("train", "test"):
        for row in read_jsonl(out / f"{name}.jsonl"):
            sides.setdefault(row["prompt"][-1]["content"], set()).add(name)
    assert len(sides) == 40 and all(len(where) == 1 for where in sides.values())
    assert {name for where in sides.values() for name in where} == {"train", "test"}


def test_data_check_with_a_model_counts_each_answer_after_its_prompt_and_names_a_pair_too_long(
    tmp_path, capsys, smol_tokenizer_dir
):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smol_tokenizer_dir)
    rows = [pair(i) for i in range(3)]
    rows[2] = {**pair(2), "rejected": [{"role": "assistant", "content": "word " * 300}]}
    data = write_rows(tmp_path / "prefs.jsonl", rows)

    def length(row: dict, answer: str) -> int:  # transformers' render, through the answer's stop token
        text = tokenizer.apply_chat_template(row["prompt"] + row[answer], tokenize=False)
        return len(tokenizer(text[: text.rindex("<|im_end|>") + len("<|im_end|>")])["input_ids"])

    assert main(["data", "stats", str(data), "--model", str(smol_tokenizer_dir), "--json"]) == 0
    tokens = json.loads(capsys.readouterr().out)["tokens"]
    assert tokens["rows"] == 3
    assert tokens["total_tokens"] == sum(length(r, "chosen") + length(r, "rejected") for r in rows)
    assert tokens["max"] == length(rows[2], "rejected")  # a pair's longest sequence

    assert main(["data", "check", str(data), "--model", str(smol_tokenizer_dir), "--max-length", "256"]) == 2
    out = " ".join(capsys.readouterr().out.split())
    assert f"{data}:3: too long: {length(rows[2], 'rejected')} tokens, max_length 256" in out, out
    assert "a preference answer is scored whole" in out and f"{data}:1" not in out
    assert "not checked yet" not in out


def test_data_check_with_a_model_measures_kto_rows(tmp_path, capsys, smol_tokenizer_dir):
    kto = write_rows(
        tmp_path / "kto.jsonl", [{"prompt": "dim", "completion": "x", "label": i % 2 == 0} for i in range(4)]
    )
    assert main(["data", "stats", str(kto), "--model", str(smol_tokenizer_dir), "--json"]) == 0
    tokens = json.loads(capsys.readouterr().out)["tokens"]
    assert tokens["rows"] == 4 and tokens["trainable_tokens"] == 4 * 2  # "x" and the stop token, each row
