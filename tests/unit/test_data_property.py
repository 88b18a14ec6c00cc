"""Property: whatever bytes a data file holds, `check_files` answers with typed issues, never a crash.

Files are written as raw bytes: valid rows of every format mixed with broken UTF-8, cut-off lines,
wrong types, 100 kB fields and random JSON. Every issue must have a known severity and point at a
line of the file it names (line 0: the file as a whole); the only exception allowed is a
`UserError` for an unusable source, and none of these files is unusable.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunesmith.data.check import check_files
from tunesmith.data.options import FormatOptions
from tunesmith.data.types import Issue

MIN_ROWS = 10_000
SETTINGS = settings(
    max_examples=100,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)

text = st.text(max_size=12)
json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False, allow_infinity=False), text
)
json_value = st.recursive(
    json_leaf, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3), max_leaves=6
)
huge = st.builds(
    lambda char, size: char * size, st.sampled_from(["x", "é", "字", " ", "\n"]), st.integers(90_000, 110_000)
)
# Mostly well-typed values, sometimes not: adapters and rules both get exercised.
content = st.one_of(
    text,
    text,
    text,
    st.none(),
    st.integers(),
    json_value,
    st.lists(st.fixed_dictionaries({"type": st.sampled_from(["text", "image"]), "text": text}), max_size=2),
    st.just("a\ud800b"),
)
role = st.sampled_from(["system", "user", "assistant", "assistant", "tool", "developer", "function", "bot", ""])
weight = st.sampled_from([0, 1, 0.0, 1.0, "1", 0.5, True, None, "x"])
tool_call = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["function", "code"]),
        "function": st.fixed_dictionaries({"name": text, "arguments": json_value | text}),
    },
    optional={"id": text},
)
message = st.fixed_dictionaries(
    {"role": role, "content": content},
    optional={"weight": weight, "tool_calls": st.lists(tool_call, max_size=2), "name": text, "tool_call_id": text},
)
token_ids = st.lists(st.integers(-101, 50_000), max_size=6)

ROWS = {
    "messages": st.fixed_dictionaries(
        {"messages": st.lists(message, max_size=4)},
        optional={"id": text | st.integers(), "tools": st.lists(json_value, max_size=2)},
    ),
    "sharegpt": st.fixed_dictionaries(
        {
            "conversations": st.lists(
                st.fixed_dictionaries(
                    {
                        "from": st.sampled_from(["human", "gpt", "system", "observation", "function_call", "bot"]),
                        "value": content,
                    }
                ),
                max_size=4,
            )
        },
        optional={"system": text},
    ),
    "alpaca": st.fixed_dictionaries(
        {"instruction": content, "output": content}, optional={"input": text, "system": text, "history": json_value}
    ),
    "qa": st.fixed_dictionaries({"question": content, "answer": content}),
    "prompt_completion": st.fixed_dictionaries(
        {"prompt": content | st.lists(message, max_size=2), "completion": content | st.lists(message, max_size=2)}
    ),
    "text": st.fixed_dictionaries({"text": content}),
    "tokens": st.fixed_dictionaries({"input_ids": token_ids}, optional={"labels": token_ids}),
}
any_row = st.one_of(*ROWS.values())


def _encode(value: object) -> bytes:
    return json.dumps(value).encode()


def _cut(line: bytes, data: st.DataObject) -> bytes:
    return line[: data.draw(st.integers(0, max(0, len(line) - 1)))]


def _bad_byte(line: bytes, data: st.DataObject) -> bytes:
    at = data.draw(st.integers(0, len(line)))
    return line[:at] + data.draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80\x80"])) + line[at:]


@st.composite
def jsonl_line(draw: st.DrawFn) -> bytes:
    """One line of a JSONL file: mostly a row of some format, often damaged."""
    kind = draw(st.sampled_from(["row"] * 6 + ["cut", "bad_utf8", "random_json", "blank", "huge"]))
    if kind == "blank":
        return b"  "
    if kind == "random_json":
        return _encode(draw(json_value))
    if kind == "huge":
        return _encode(
            {
                draw(st.sampled_from(["text", "instruction", "output", "messages"])): draw(huge),
                "output": "ok",
                "instruction": "hi",
            }
        )
    line = _encode(draw(any_row))
    data = draw(st.data())
    return {
        "row": line,
        "cut": _cut(line, data) if kind == "cut" else line,
        "bad_utf8": _bad_byte(line, data) if kind == "bad_utf8" else line,
    }[kind]


@st.composite
def csv_file(draw: st.DrawFn) -> tuple[bytes, int]:
    """A CSV file (valid header) whose records are text cells, JSON cells, odd widths or bad bytes."""
    header = draw(
        st.sampled_from(
            [
                ["instruction", "input", "output"],
                ["prompt", "completion"],
                ["text"],
                ["messages"],
                ["question", "answer", "id"],
            ]
        )
    )
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    rows = draw(
        st.lists(
            st.lists(text | json_value.map(json.dumps), min_size=len(header) - 1, max_size=len(header) + 1),
            min_size=50,
            max_size=80,
        )
    )
    writer.writerows(rows)
    head, _, body = buffer.getvalue().encode("utf-8", "surrogatepass").partition(b"\n")
    if draw(st.booleans()):  # damage below the header: a header that cannot be read is a UserError, rightly
        body = _bad_byte(body, draw(st.data()))
    return head + b"\n" + body, len(rows)


def assert_typed(issues: list[Issue], path: Path) -> None:
    lines = path.read_bytes().count(b"\n") + 1
    for issue in issues:
        assert isinstance(issue, Issue) and issue.severity in ("error", "warning"), issue
        assert issue.code and isinstance(issue.message, str) and isinstance(issue.field, str), issue
        assert issue.where.file == str(path), issue
        assert 1 <= issue.where.line <= lines or (issue.where.line == 0 and issue.code == "empty_file"), issue
        json.dumps(issue.as_dict())


def test_check_files_answers_every_file_with_typed_issues(tmp_path):
    generated = [0]

    @SETTINGS
    @given(
        lines=st.lists(jsonl_line(), min_size=60, max_size=90),
        csv_data=csv_file(),
        fmt=st.sampled_from(["auto"] * 4 + ["messages", "alpaca", "text", "tokens"]),
    )
    def check(lines: list[bytes], csv_data: tuple[bytes, int], fmt: str) -> None:
        jsonl = tmp_path / "rows.jsonl"
        jsonl.write_bytes(b"\n".join(lines) + b"\n")
        table = tmp_path / "rows.csv"
        table.write_bytes(csv_data[0])
        generated[0] += len(lines) + csv_data[1]
        report = check_files(
            [str(jsonl), str(table)],
            options=FormatOptions(format=fmt),
            splits={str(jsonl): "train", str(table): "test"},
        )
        assert_typed([i for i in report.issues if i.where.file == str(jsonl)], jsonl)
        assert_typed([i for i in report.issues if i.where.file == str(table)], table)
        assert len(report.issues) == sum(f.errors + f.warnings for f in report.files)
        assert report.stats.rows == sum(f.rows for f in report.files)
        json.dumps(report.to_json())

    check()
    assert generated[0] >= MIN_ROWS


def test_check_files_with_a_tokenizer_answers_every_row_with_typed_issues(tmp_path, smol_tokenizer_dir):
    """The same, through the embedded model's chat template and tokenizer (tests/fixtures/tokenizers, no
    weights): odd text must not crash encoding."""
    from tunesmith.formatting.measure import measure_for as build_measure

    measure = build_measure(_tokenizer(smol_tokenizer_dir), train_on="assistant")

    @settings(SETTINGS, max_examples=25)
    @given(lines=st.lists(any_row.map(_encode) | st.just(_encode({"text": "a\udc80"})), min_size=5, max_size=30))
    def check(lines: list[bytes]) -> None:
        path = tmp_path / "rows.jsonl"
        path.write_bytes(b"\n".join(lines) + b"\n")
        report = check_files([str(path)], options=FormatOptions(), measure=measure, max_length=64, workers=1)
        assert_typed(report.issues, path)
        assert report.stats.tokens is None or report.stats.tokens.rows <= report.stats.rows

    check()


def _tokenizer(folder):
    from tunesmith.models.load import ModelRef, load_tokenizer

    return load_tokenizer(ModelRef(str(folder), str(folder), "local"))
