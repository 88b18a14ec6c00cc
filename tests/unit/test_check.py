"""`check_files`: every row checked, every problem at file:line and field, rows after a bad one still read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunesmith.data.check import Report, check_files, classify_row
from tunesmith.data.options import FormatOptions
from tunesmith.data.stats import Stats
from tunesmith.data.types import Conversation, Issue, Provenance, RawRow

OPTIONS = FormatOptions()


def chat(i: int, answer: str | None = None, role: str = "assistant") -> dict:
    return {
        "messages": [
            {"role": "user", "content": f"What is {i} plus {i}?"},
            {"role": role, "content": answer if answer is not None else str(i + i)},
        ]
    }


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def issues_at(report: Report, code: str) -> list[Issue]:
    return [i for i in report.issues if i.code == code]


@pytest.fixture()
def hundred_rows(tmp_path) -> Path:
    """100 chat rows; line 57 has role 'assistent', line 80 a number for content."""
    rows = [chat(i) for i in range(100)]
    rows[56] = chat(56, role="assistent")
    rows[79] = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": 42}]}
    return write_jsonl(tmp_path / "train.jsonl", rows)


def test_a_bad_row_is_named_by_line_and_field_and_later_rows_are_still_checked(hundred_rows):
    report = check_files([str(hundred_rows)], options=OPTIONS)
    errors = [i for i in report.issues if i.severity == "error"]
    assert [(e.where.line, e.field, e.code) for e in errors] == [
        (57, "messages[1].role", "unknown_role"),
        (80, "messages[1].content", "wrong_type"),
    ]
    assert str(errors[0]).startswith(f"{hundred_rows}:57: messages[1].role: unknown role 'assistent'")
    (file,) = report.files
    assert (file.format, file.reason, file.rows, file.errors) == ("messages", "key messages", 100, 2)
    assert file.kind == "jsonl"
    assert report.stats.rows == 100 and report.stats.valid_rows == 98
    assert report.failed("error")


def test_unreadable_lines_are_issues_and_reading_goes_on(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(
        b"".join(
            [
                json.dumps(chat(1)).encode() + b"\n",
                b'{"messages": [\n',
                b"\xff\xfe\n",
                b"[1, 2]\n",
                json.dumps(chat(2)).encode() + b"\n",
            ]
        )
    )
    report = check_files([str(path)], options=OPTIONS)
    assert [(i.where.line, i.code) for i in report.issues] == [
        (2, "invalid_json"),
        (3, "invalid_utf8"),
        (4, "not_an_object"),
    ]
    assert report.stats.valid_rows == 2


def test_format_is_detected_on_the_first_readable_row_and_stated_once(tmp_path):
    path = write_jsonl(
        tmp_path / "alpaca.jsonl", ["{broken", {"foo": 1}, {"instruction": "Say hi", "output": "hi"}, chat(3)]
    )
    report = check_files([str(path)], options=OPTIONS)
    assert (report.files[0].format, report.files[0].reason) == ("alpaca", "keys instruction and output")
    assert [(i.where.line, i.code) for i in report.issues] == [
        (1, "invalid_json"),
        (2, "unknown_format"),
        (4, "missing_key"),
    ]


def test_sample_rules_are_applied_to_every_row(tmp_path):
    rows = [
        chat(1),
        {"messages": [{"role": "user", "content": "hi"}]},
        {
            "messages": [
                {"role": "user", "content": "a"},
                {"role": "user", "content": "b"},
                {"role": "assistant", "content": "c"},
            ]
        },
    ]
    report = check_files([str(write_jsonl(tmp_path / "d.jsonl", rows))], options=OPTIONS)
    assert [(i.where.line, i.code, i.severity) for i in report.issues] == [
        (2, "no_assistant", "error"),
        (3, "consecutive_roles", "warning"),
    ]


def test_duplicates_and_near_duplicates_name_the_first_occurrence(tmp_path):
    rows = [
        chat(1),
        chat(2),
        chat(1),
        {"messages": [{"role": "user", "content": "what is 2 plus 2"}, {"role": "assistant", "content": "4."}]},
    ]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    report = check_files([str(path)], options=OPTIONS)
    assert [(i.where.line, i.code, i.message) for i in report.issues] == [
        (3, "duplicate", f"duplicate of {path}:1"),
        (4, "near_duplicate", f"same as {path}:2 except for case, spacing or punctuation"),
    ]
    assert all(i.severity == "warning" for i in report.issues)
    assert not report.failed("error") and report.failed("warning")


def test_duplicates_across_files_of_one_split(tmp_path):
    first = write_jsonl(tmp_path / "a.jsonl", [chat(1)])
    second = write_jsonl(tmp_path / "b.jsonl", [chat(2), chat(1)])
    report = check_files([str(first), str(second)], options=OPTIONS)
    assert [(str(i.where), i.message) for i in report.issues] == [(f"{second}:2", f"duplicate of {first}:1")]


def test_test_rows_also_in_train_are_split_overlap_whatever_the_file_order(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [chat(i) for i in range(5)])
    test = write_jsonl(tmp_path / "test.jsonl", [chat(3), chat(9), chat(9)])
    splits = {str(train): "train", str(test): "test"}
    report = check_files([str(test), str(train)], options=OPTIONS, splits=splits)
    assert [(str(i.where), i.code, i.message) for i in report.issues] == [
        (f"{test}:1", "split_overlap", f"also in the training data at {train}:4"),
        (f"{test}:3", "duplicate", f"duplicate of {test}:2"),
    ]
    assert [f.reference for f in report.files] == [str(test), str(train)]
    assert [f.split for f in report.files] == ["test", "train"]


def test_an_empty_file_is_an_error(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n", encoding="utf-8")
    report = check_files([str(empty)], options=OPTIONS)
    assert [(i.code, i.severity, i.where.line) for i in report.issues] == [("empty_file", "error", 0)]
    assert report.files[0].rows == 0 and report.failed()


def test_report_json_has_every_issue_and_the_counts(hundred_rows, tmp_path):
    extra = write_jsonl(tmp_path / "more.jsonl", [chat(1), chat(1)])
    report = check_files([str(hundred_rows), str(extra)], options=OPTIONS)
    data = json.loads(json.dumps(report.to_json()))
    assert data["issues"] == [i.as_dict() for i in report.issues] and len(data["issues"]) == 4
    assert set(data["issues"][0]) == {"code", "severity", "file", "line", "field", "message", "hint"}
    assert data["counts"] == {"error": 2, "warning": 2}
    assert data["counts_by_code"]["duplicate"] == 2  # more.jsonl:2 and train.jsonl's twin in more.jsonl:1
    assert [f["rows"] for f in data["files"]] == [100, 2]
    assert data["stats"]["rows"] == 102 and data["stats"]["tokens"] is None


def test_failed_semantics():
    where = Provenance("f", 1)
    warning = Issue("duplicate", "warning", where, "", "dup")
    error = Issue("no_assistant", "error", where, "messages", "none")
    stats = Stats(0, 0, {}, 0, 0.0, 0, {})
    assert not Report([], [], stats).failed("error") and not Report([], [], stats).failed("warning")
    assert not Report([], [warning], stats).failed("error") and Report([], [warning], stats).failed("warning")
    assert Report([], [error], stats).failed("error") and Report([], [error, warning], stats).failed("warning")
    with pytest.raises(ValueError):
        Report([], [], stats).failed("info")


def test_classify_row_gives_a_sample_exactly_when_no_issue_is_an_error():
    where = Provenance("f.jsonl", 3)
    sample, issues = classify_row(RawRow(where, chat(1)), "messages", OPTIONS)
    assert isinstance(sample, Conversation) and issues == []
    bom = Issue("bom", "warning", where, "", "byte-order mark")
    sample, issues = classify_row(RawRow(where, chat(1), bom), "messages", OPTIONS)
    assert sample is not None and issues == [bom]
    unreadable = Issue("invalid_json", "error", where, "", "invalid JSON")
    assert classify_row(RawRow(where, None, unreadable), "messages", OPTIONS) == (None, [unreadable])
    sample, issues = classify_row(RawRow(where, chat(1, role="bot")), "messages", OPTIONS)
    assert sample is None and [i.code for i in issues] == ["unknown_role"]
    sample, issues = classify_row(RawRow(where, chat(1, answer="")), "messages", OPTIONS)
    assert sample is None and [(i.code, i.field) for i in issues] == [("empty_content", "messages[1].content")]


# ---- with the embedded model's tokenizer (tests/fixtures/tokenizers: no weights) ------------------


@pytest.fixture(scope="module")
def measure(smol_tokenizer_dir):
    from tunesmith.formatting.measure import measure_for as build_measure

    return build_measure(_tokenizer(smol_tokenizer_dir), train_on="assistant")


def test_token_stats_over_long_rows_and_trainable_share(tmp_path, measure):
    long_answer = " ".join(["word"] * 300)
    rows = [chat(i) for i in range(20)] + [chat(100, answer=long_answer), chat(101, answer=long_answer + " more")]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    examples = [e for s in _samples(path) for e in measure(s)]  # one Example per row here
    lengths = [len(e.input_ids) for e in examples]
    max_length = 64
    report = check_files([str(path)], options=OPTIONS, measure=measure, max_length=max_length)
    tokens = report.stats.tokens
    assert tokens.rows == 22 and tokens.max == max(lengths) and tokens.total_tokens == sum(lengths)
    assert tokens.trainable_tokens == sum(e.n_trainable for e in examples)
    assert tokens.trainable_share == pytest.approx(tokens.trainable_tokens / tokens.total_tokens)
    assert 0 < tokens.trainable_share < 1
    assert tokens.rows_over_max_length == 2
    assert tokens.tokens_cut == sum(n - max_length for n in lengths if n > max_length)
    assert sum(b["rows"] for b in tokens.histogram) == 22 and tokens.histogram[-1] == {
        "low": 65,
        "high": None,
        "rows": 2,
    }
    too_long = issues_at(report, "too_long")
    assert [i.where.line for i in too_long] == [21, 22] and all(i.severity == "warning" for i in too_long)
    assert f"{lengths[20] - max_length} tokens would be cut" in too_long[0].message
    assert not report.failed()


def test_a_row_whose_trained_tokens_all_lie_past_max_length_is_an_error(tmp_path, measure):
    long_question = {
        "messages": [{"role": "user", "content": " ".join(["word"] * 200)}, {"role": "assistant", "content": "ok"}]
    }
    path = write_jsonl(tmp_path / "d.jsonl", [chat(1), long_question])
    report = check_files([str(path)], options=OPTIONS, measure=measure, max_length=64)
    assert [(i.where.line, i.code, i.severity) for i in report.issues] == [(2, "nothing_trains_after_cut", "error")]


def test_rows_that_train_no_token_are_errors(tmp_path, smol_tokenizer_dir):
    """Under train_on=last, a row whose last assistant turn has weight 0 trains nothing, though each
    turn on its own is fine: only the encoded example shows it."""
    from tunesmith.formatting.measure import measure_for as build_measure

    silent = {
        "messages": [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b"},
            {"role": "user", "content": "c"},
            {"role": "assistant", "content": "d", "weight": 0},
        ]
    }
    path = write_jsonl(tmp_path / "d.jsonl", [chat(1), silent])
    measure = build_measure(_tokenizer(smol_tokenizer_dir), train_on="last")
    report = check_files([str(path)], options=OPTIONS, measure=measure, max_length=64)
    assert [(i.where.line, i.code, i.severity) for i in report.issues] == [(2, "no_trainable_tokens", "error")]
    assert report.stats.tokens.rows == 2 and report.stats.valid_rows == 1


def _samples(path: Path) -> list:
    from tunesmith.data.check import FileStream

    return [sample for _, sample, _ in FileStream(str(path), OPTIONS)]


def test_encoding_in_workers_gives_the_same_report_as_encoding_here(tmp_path, measure, monkeypatch):
    monkeypatch.setattr("tunesmith.data.check.CHUNK_ROWS", 7)  # many chunks in flight, few rows
    long_answer = " ".join(["word"] * 80)
    rows = [chat(i % 30, answer=long_answer if i % 11 == 0 else None) for i in range(45)]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    here = check_files([str(path)], options=OPTIONS, measure=measure, max_length=60, workers=1)
    pooled = check_files([str(path)], options=OPTIONS, measure=measure, max_length=60, workers=2)
    assert here.issues == pooled.issues and here.stats == pooled.stats
    assert {i.code for i in here.issues} == {"duplicate", "too_long"}
    assert here.stats.tokens.rows == 45


def test_a_row_the_chat_template_refuses_is_an_error_and_checking_goes_on(tmp_path, smol_tokenizer_dir):
    from tunesmith.formatting.measure import measure_for as build_measure

    strict = tmp_path / "strict.jinja"
    strict.write_text(
        "{% for m in messages %}{% if not loop.first and m.role == messages[loop.index0 - 1].role %}"
        "{{ raise_exception('roles must alternate') }}{% endif %}"
        "<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}",
        encoding="utf-8",
    )
    twice = {
        "messages": [
            {"role": "user", "content": "a"},
            {"role": "user", "content": "b"},
            {"role": "assistant", "content": "c"},
        ]
    }
    path = write_jsonl(tmp_path / "d.jsonl", [chat(1), twice, chat(2)])
    measure = build_measure(_tokenizer(smol_tokenizer_dir), train_on="assistant", template=str(strict))
    report = check_files([str(path)], options=OPTIONS, measure=measure, max_length=64, workers=2)
    assert [(i.where.line, i.code, i.severity) for i in report.issues] == [
        (2, "consecutive_roles", "warning"),
        (2, "render_failed", "error"),
    ]
    assert "roles must alternate" in report.issues[1].message
    assert report.stats.tokens.rows == 2 and report.stats.valid_rows == 2


def test_a_worker_that_dies_stops_the_check_instead_of_hanging_it(tmp_path):
    import os
    from concurrent.futures.process import BrokenProcessPool

    path = write_jsonl(tmp_path / "d.jsonl", [chat(1), chat(2)])
    with pytest.raises(BrokenProcessPool):
        check_files([str(path)], options=OPTIONS, measure=lambda sample: os._exit(3), workers=2)


def _tokenizer(folder):
    from tunesmith.models.load import ModelRef, load_tokenizer

    return load_tokenizer(ModelRef(str(folder), str(folder), "local"))
