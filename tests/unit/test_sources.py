"""Data sources: every kind reads the same rows with the right lines; bad rows are issues, not crashes."""

from __future__ import annotations

import json
import os
import types
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunesmith.data import readers
from tunesmith.data.sources import iter_rows, open_source, parse_hub_reference, resolve_data_path
from tunesmith.data.types import Provenance, RawRow
from tunesmith.errors import UserError

ROWS = [
    {"id": 1, "text": "héllo wörld ✓", "tags": ["a", "b"]},
    {"id": 2, "text": "日本語のテキスト", "tags": []},
    {"id": 3, "text": "plain", "tags": ["c"]},
]
SUPPORTED = "(supported: .jsonl, .json, .csv, .tsv, .parquet, a datasets folder, hf:NAME)"


def _read(path: Path | str) -> list[RawRow]:
    return list(iter_rows(str(path)))


def _lines(rows: list[RawRow]) -> list[int]:
    return [row.where.line for row in rows]


def _only_issue(rows: list[RawRow], code: str) -> RawRow:
    matching = [row for row in rows if row.issue is not None and row.issue.code == code]
    assert len(matching) == 1, [str(row.issue) for row in rows if row.issue]
    return matching[0]


# --- every kind, the same rows -------------------------------------------------------------------


def test_jsonl_skips_a_blank_line_but_counts_it(tmp_path):
    path = tmp_path / "rows.jsonl"
    lines = [json.dumps(row, ensure_ascii=False) for row in ROWS]
    path.write_text(f"{lines[0]}\n\n{lines[1]}\n{lines[2]}\n", encoding="utf-8")
    rows = _read(path)
    assert [row.data for row in rows] == ROWS
    assert _lines(rows) == [1, 3, 4]
    assert all(row.issue is None for row in rows) and rows[0].where == Provenance(str(path), 1)


def test_ndjson_is_read_as_jsonl(tmp_path):
    path = tmp_path / "rows.ndjson"
    path.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    assert open_source(str(path)).kind == "jsonl"
    assert [row.data for row in _read(path)] == ROWS


def test_json_array_pretty_printed_gives_each_element_its_line(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text(json.dumps(ROWS, indent=2, ensure_ascii=False), encoding="utf-8")
    rows = _read(path)
    assert [row.data for row in rows] == ROWS
    # "[" on line 1; an element spans "{", 3 keys, the tags' items and "]" when it has any, "},"
    text_lines = path.read_text(encoding="utf-8").splitlines()
    assert [text_lines[line - 1].strip() for line in _lines(rows)] == ["{", "{", "{"]
    assert _lines(rows) == [2, 10, 15]


def test_json_object_with_one_list_of_rows(tmp_path):
    path = tmp_path / "rows.json"
    body = ",\n    ".join(json.dumps(row, ensure_ascii=False) for row in ROWS)
    path.write_text(f'{{\n  "data": [\n    {body}\n  ]\n}}\n', encoding="utf-8")
    rows = _read(path)
    assert [row.data for row in rows] == ROWS
    assert _lines(rows) == [3, 4, 5]


def test_json_columns_become_rows(tmp_path):
    path = tmp_path / "columns.json"
    columns = {key: [row[key] for row in ROWS] for key in ROWS[0]}
    path.write_text(json.dumps(columns, indent=1, ensure_ascii=False), encoding="utf-8")
    rows = _read(path)
    assert [row.data for row in rows] == ROWS
    assert _lines(rows) == [3, 4, 5]  # the line of each row's value in the first column


def test_json_columns_of_unequal_length_are_one_issue(tmp_path):
    path = tmp_path / "columns.json"
    path.write_text('{"a": [1, 2],\n "b": [1]}')
    (row,) = _read(path)
    assert row.data is None and row.issue.code == "unsupported_json_shape" and row.where.line == 2
    assert "'a' has 2 values but 'b' has 1;" in row.issue.message


def test_csv_quoted_multiline_field_keeps_later_lines_right(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text('id,text,tags\n1,"héllo\nwörld, ✓",a\n2,日本語,\n3,"say ""hi""",c\n', encoding="utf-8")
    rows = _read(path)
    assert [row.data for row in rows] == [
        {"id": "1", "text": "héllo\nwörld, ✓", "tags": "a"},
        {"id": "2", "text": "日本語", "tags": ""},
        {"id": "3", "text": 'say "hi"', "tags": "c"},
    ]
    assert _lines(rows) == [2, 4, 5]


def test_csv_cells_stay_text_even_when_they_hold_json(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text('messages\n"[{""role"": ""user""}]"\n')
    assert _read(path)[0].data == {"messages": '[{"role": "user"}]'}


def test_tsv_is_split_on_tabs(tmp_path):
    path = tmp_path / "rows.tsv"
    path.write_text("id\ttext\n1\théllo, wörld\n2\t日本語\n\n3\tplain\n", encoding="utf-8")
    rows = _read(path)
    assert [row.data for row in rows] == [
        {"id": "1", "text": "héllo, wörld"},
        {"id": "2", "text": "日本語"},
        {"id": "3", "text": "plain"},
    ]
    assert _lines(rows) == [2, 3, 5]


def test_csv_allows_fields_larger_than_the_stdlib_default(tmp_path):
    path = tmp_path / "big.csv"
    path.write_text(f'text\n"{"x" * 300_000}"\n')
    (row,) = _read(path)
    assert len(row.data["text"]) == 300_000


def test_parquet_rows_keep_nesting_and_count_from_one(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), path)
    rows = _read(path)
    assert [row.data for row in rows] == ROWS
    assert _lines(rows) == [1, 2, 3]


def test_parquet_that_is_not_parquet_is_a_user_error(tmp_path):
    path = tmp_path / "rows.parquet"
    path.write_text("not parquet at all")
    with pytest.raises(UserError, match="not a readable Parquet file"):
        _read(path)


def test_datasets_folder_is_read_by_row_number(tmp_path):
    import datasets

    folder = tmp_path / "saved"
    datasets.Dataset.from_list(ROWS).save_to_disk(str(folder))
    source = open_source(str(folder))
    assert source.kind == "hf_disk"
    rows = list(source.rows())
    assert [row.data for row in rows] == ROWS
    assert _lines(rows) == [1, 2, 3]


def test_dataset_dict_folder_reads_its_only_split_and_refuses_to_guess_among_several(tmp_path):
    import datasets

    one = tmp_path / "one"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS)}).save_to_disk(str(one))
    assert [row.data for row in _read(one)] == ROWS
    several = tmp_path / "several"
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(ROWS), "test": datasets.Dataset.from_list(ROWS[:1])}
    ).save_to_disk(str(several))
    with pytest.raises(UserError, match=r"splits train, test; point at one split's folder, e\.g\. .*train"):
        open_source(str(several))
    assert len(_read(several / "test")) == 1


def test_a_plain_folder_is_not_a_datasets_folder(tmp_path):
    with pytest.raises(UserError, match="not one saved by datasets"):
        open_source(str(tmp_path))


# --- bad rows are issues, and reading goes on ----------------------------------------------------


def test_jsonl_invalid_json_at_line_57_is_an_issue_between_good_rows(tmp_path):
    path = tmp_path / "rows.jsonl"
    lines = [json.dumps({"i": i}) for i in range(1, 61)]
    lines[56] = '{"i": 57, "oops"}'
    path.write_text("\n".join(lines) + "\n")
    rows = _read(path)
    bad = _only_issue(rows, "invalid_json")
    assert str(bad.where) == f"{path}:57" and bad.data is None and bad.issue.severity == "error"
    assert bad.issue.message.startswith("invalid JSON: ") and "(column 17)" in bad.issue.message
    by_line = {row.where.line: row.data for row in rows}
    assert by_line[56] == {"i": 56} and by_line[58] == {"i": 58} and len(rows) == 60


def test_jsonl_invalid_utf8_names_the_byte_offset(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'{"a": 1}\n{"a": "\xff"}\n{"a": 3}\n')
    rows = _read(path)
    bad = _only_issue(rows, "invalid_utf8")
    assert bad.where.line == 2 and "byte offset 16" in bad.issue.message  # 9 bytes of line 1, then 7
    assert [row.data for row in rows] == [{"a": 1}, None, {"a": 3}]


def test_jsonl_value_that_is_not_an_object(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n[1, 2]\n"text"\n')
    rows = _read(path)
    assert [(row.issue.code, row.issue.message) for row in rows[1:]] == [
        ("not_an_object", "expected a JSON object, got list"),
        ("not_an_object", "expected a JSON object, got string"),
    ]


def test_jsonl_bom_is_stripped_with_a_warning_on_the_first_row(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}\n{"a": 2}\n')
    first, second = _read(path)
    assert first.data == {"a": 1} and first.issue.code == "bom" and first.issue.severity == "warning"
    assert second.data == {"a": 2} and second.issue is None


def test_jsonl_truncated_last_line_is_invalid_json(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n{"a": 2, "b": "cut of')
    rows = _read(path)
    assert rows[0].data == {"a": 1}
    assert rows[1].issue.code == "invalid_json" and rows[1].where.line == 2


def test_json_broken_element_stops_with_one_issue(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text('[\n{"a": 1},\n{"a": 2,, "b": 3},\n{"a": 3}\n]')
    rows = _read(path)
    assert rows[0].data == {"a": 1}
    assert len(rows) == 2 and rows[1].where.line == 3 and rows[1].issue.code == "invalid_json"
    assert "the rest of the file was not read" in rows[1].issue.message


def test_json_bad_utf8_and_non_objects_are_issues_and_reading_goes_on(tmp_path):
    path = tmp_path / "rows.json"
    path.write_bytes(b'\xef\xbb\xbf[{"a": 1},\n {"a": "\xc3"},\n [1],\n null,\n {"a": "\xc3\xa9"}]')
    rows = _read(path)
    assert [(row.where.line, row.issue and row.issue.code) for row in rows] == [
        (1, "bom"),
        (2, "invalid_utf8"),
        (3, "not_an_object"),
        (4, "not_an_object"),
        (5, None),
    ]
    assert "byte offset 22" in rows[1].issue.message  # BOM 3 + line 1 11 + 8
    assert rows[3].issue.message == "expected a JSON object, got null" and rows[4].data == {"a": "é"}


def test_json_top_level_scalar_and_empty_files(tmp_path):
    scalar, empty, blank = tmp_path / "s.json", tmp_path / "e.json", tmp_path / "e.jsonl"
    scalar.write_text('"just text"')
    empty.write_text("  \n")
    blank.write_text("")
    assert _read(scalar)[0].issue.code == "unsupported_json_shape"
    assert _read(empty) == [] and _read(blank) == []


def test_csv_row_with_too_many_fields_and_one_with_too_few(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text("a,b,c\n1,2,3\n1,2,3,4\n1,2\n")
    rows = _read(path)
    bad = _only_issue(rows, "bad_csv_row")
    assert bad.where.line == 3 and "has 4 fields but the header has 3" in bad.issue.message
    assert rows[2].data == {"a": "1", "b": "2"}


def test_csv_invalid_utf8_costs_one_row_and_a_bom_is_dropped(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_bytes(b"\xef\xbb\xbfa,b\n1,\xff\n2,ok\n")
    rows = _read(path)
    assert rows[0].issue.code == "invalid_utf8" and rows[0].where.line == 2
    assert "byte offset 9" in rows[0].issue.message  # counted in the file, BOM included
    assert rows[1].data == {"a": "2", "b": "ok"} and rows[1].issue is None


def test_csv_header_naming_a_column_twice_is_a_user_error(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text("a,b,a\n1,2,3\n")
    with pytest.raises(UserError, match="more than once: a"):
        _read(path)


# --- references that cannot be used --------------------------------------------------------------


def test_hub_dataset_offline_is_a_quick_user_error(monkeypatch):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # set by conftest; datasets must not try the network
    with pytest.raises(UserError, match=r"^hf:some/dataset: could not load from the Hugging Face hub: \S"):
        _read("hf:some/dataset")


def test_hub_reference_names_a_split_and_is_fingerprinted_by_name():
    assert parse_hub_reference("hf:some/dataset") == ("some/dataset", "train")
    assert open_source("hf:some/dataset:test").fingerprint() == "hf:some/dataset:test"
    with pytest.raises(UserError, match="expected hf:NAME or hf:NAME:SPLIT"):
        open_source("hf:")


def test_missing_file_and_unsupported_type(tmp_path):
    with pytest.raises(UserError, match=r"^data file not found: nowhere\.jsonl$"):
        open_source("nowhere.jsonl")
    sheet = tmp_path / "rows.xlsx"
    sheet.write_bytes(b"PK")
    with pytest.raises(UserError) as caught:
        open_source(str(sheet))
    assert str(caught.value) == f"{sheet}: unsupported file type '.xlsx' {SUPPORTED}"


def test_bundled_data_resolves_and_reads_sixty_rows():
    assert resolve_data_path("bundled:smart_home/test.jsonl").name == "test.jsonl"
    rows = _read("bundled:smart_home/test.jsonl")
    assert len(rows) == 60 and all(row.issue is None and "messages" in row.data for row in rows)
    with pytest.raises(UserError, match="bundled data not found"):
        open_source("bundled:smart_home/nope.jsonl")


# --- streaming: memory flat in the number of rows ------------------------------------------------


def _write_jsonl(path: Path, count: int) -> None:
    path.write_text("".join(f'{{"i": {i}}}\n' for i in range(count)))


def _write_json_array(path: Path, count: int) -> None:
    path.write_text("[\n" + ",\n".join(f'{{"i": {i}}}' for i in range(count)) + "\n]\n")


def _write_json_data(path: Path, count: int) -> None:
    path.write_text('{"data": [\n' + ",\n".join(f'{{"i": {i}}}' for i in range(count)) + "\n]}\n")


def _write_csv(path: Path, count: int) -> None:
    path.write_text("i\n" + "".join(f"{i}\n" for i in range(count)))


@pytest.mark.parametrize(
    ("name", "write"),
    [
        ("big.jsonl", _write_jsonl),
        ("big.json", _write_json_array),
        ("data.json", _write_json_data),
        ("big.csv", _write_csv),
    ],
)
def test_rows_stream_without_reading_the_file_to_the_end(tmp_path, name, write):
    path = tmp_path / name
    write(path, 200_000)
    rows = iter_rows(str(path))
    assert isinstance(rows, types.GeneratorType)
    first = next(rows)
    # Cut the file under the open reader: a streaming reader sees the cut, one that read ahead does not.
    os.truncate(path, 200_000)
    rest = [row for row in rows if row.data is not None]
    assert first.data in ({"i": 0}, {"i": "0"}) and first.where.line in (1, 2)
    assert 1_000 < len(rest) < 50_000


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    elements=st.lists(
        st.one_of(
            st.dictionaries(
                st.text(max_size=5),
                st.recursive(
                    st.none()
                    | st.booleans()
                    | st.integers()
                    | st.floats(allow_nan=False, allow_infinity=False)
                    | st.text(),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
                    max_leaves=8,
                ),
                max_size=4,
            ),
            st.integers(),
            st.text(max_size=3),
        ),
        max_size=12,
    ),
    indent=st.sampled_from([None, 0, 2]),
    chunk=st.integers(min_value=1, max_value=40),
)
def test_json_array_read_in_any_chunk_size_matches_a_whole_file_parse(tmp_path, monkeypatch, elements, indent, chunk):
    monkeypatch.setattr(readers._JsonCursor, "CHUNK", chunk)
    path = tmp_path / "rows.json"
    text = json.dumps(elements, indent=indent, ensure_ascii=False)
    path.write_text(text, encoding="utf-8")
    expected, decoder, pos = [], json.JSONDecoder(), text.index("[") + 1
    for element in elements:  # reference: element start lines from the whole text at once
        pos += len(text[pos:]) - len(text[pos:].lstrip(" \n,"))
        expected.append((text.count("\n", 0, pos) + 1, element if isinstance(element, dict) else None))
        pos = decoder.raw_decode(text, pos)[1]
    assert [(row.where.line, row.data) for row in _read(path)] == expected


# --- fingerprints --------------------------------------------------------------------------------


def test_fingerprint_is_stable_and_changes_with_one_byte(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n')
    before = open_source(str(path)).fingerprint()
    assert open_source(str(path)).fingerprint() == before and len(before) == 64
    path.write_text('{"a": 2}\n')
    assert open_source(str(path)).fingerprint() != before


def test_datasets_folder_fingerprint_follows_its_data(tmp_path):
    import datasets

    first, second = tmp_path / "first", tmp_path / "second"
    datasets.Dataset.from_list(ROWS).save_to_disk(str(first))
    datasets.Dataset.from_list(ROWS[:2]).save_to_disk(str(second))
    fingerprint = open_source(str(first)).fingerprint()
    assert open_source(str(first)).fingerprint() == fingerprint != open_source(str(second)).fingerprint()
