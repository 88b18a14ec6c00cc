"""Readers for text data files (JSONL, JSON, CSV/TSV): every row with the line it starts on.

Each reader is a generator over one file, so memory stays flat in the number of rows: JSONL and
CSV go line by line, JSON element by element. A row that cannot be read becomes a `RawRow` with
`data=None` and an error `Issue`, never an exception, and reading goes on; JSON alone stops at a
broken element, since nothing after it can be trusted, with one issue saying so.
`data/sources.py` picks the reader (and reads the Arrow-backed kinds, whose "line" is a row
number); use `iter_rows` from there rather than these directly.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from tunesmith.data.types import Issue, Provenance, RawRow

UTF8_HINT = "save the file as UTF-8"
_JSON_SHAPE_HINT = 'use [{...}, ...], {"rows": [{...}, ...]} or columns {"a": [...], "b": [...]} of equal length'
# Bytes that are not UTF-8 decode under "surrogateescape" to these lone surrogates; valid UTF-8
# never produces them, so finding one in decoded text means the file had a bad byte there.
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")
_WHITESPACE = re.compile(r"[ \t\n\r]*")


def error_row(where: Provenance, code: str, message: str, hint: str = "") -> RawRow:
    """A row that could not be read: no data, one error issue saying why."""
    return RawRow(where, None, Issue(code, "error", where, "", message, hint))


def _bom_warning(where: Provenance) -> Issue:
    return Issue(
        "bom",
        "warning",
        where,
        "",
        "the file starts with a UTF-8 byte-order mark; it was ignored",
        "save the file as UTF-8 without BOM",
    )


def _json_type(value: Any) -> str:
    """The JSON name of a decoded value's type, for messages.

    >>> _json_type([1]), _json_type(None), _json_type(2.5)
    ('list', 'null', 'number')
    """
    names = {dict: "object", list: "list", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _reason(err: json.JSONDecodeError) -> str:
    """The decoder's message without its dangling "at" ("Invalid control character at")."""
    return err.msg.removesuffix(" at")


def _object_row(where: Provenance, value: Any, warning: Issue | None = None) -> RawRow:
    if isinstance(value, dict):
        return RawRow(where, value, warning)
    return error_row(
        where,
        "not_an_object",
        f"expected a JSON object, got {_json_type(value)}",
        'each row must be an object with named fields, like {"text": ...}',
    )


# --- JSONL ---------------------------------------------------------------------------------------


def jsonl_rows(path: Path) -> Iterator[RawRow]:
    """One row per non-blank line; line numbers are physical lines, so blank lines still count."""
    label = str(path)
    offset = 0
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            start, offset = offset, offset + len(raw)
            has_bom = number == 1 and raw.startswith(codecs.BOM_UTF8)
            if has_bom:
                raw, start = raw[len(codecs.BOM_UTF8) :], start + len(codecs.BOM_UTF8)
            if raw.strip():
                yield _jsonl_row(raw, Provenance(label, number), start, has_bom)


def _jsonl_row(raw: bytes, where: Provenance, offset: int, has_bom: bool) -> RawRow:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return error_row(
            where,
            "invalid_utf8",
            f"invalid UTF-8 at byte offset {offset + err.start} (column {err.start + 1} of the line)",
            UTF8_HINT,
        )
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        return error_row(
            where,
            "invalid_json",
            f"invalid JSON: {_reason(err)} (column {err.colno})",
            "each line must be one complete JSON object",
        )
    return _object_row(where, value, _bom_warning(where) if has_bom else None)


# --- JSON ----------------------------------------------------------------------------------------


class _StopReading(Exception):
    """The rest of a JSON file cannot be read as rows; carries the one issue that says why."""

    def __init__(self, code: str, line: int, message: str, hint: str):
        super().__init__(message)
        self.code, self.line, self.message, self.hint = code, line, message, hint


class _JsonCursor:
    """A window over a JSON file read in chunks: decode one value at a time, knowing its line.

    Consumed text is dropped on each refill, so memory holds one element and a chunk, not the
    file. Bytes that are not UTF-8 are kept (surrogateescape) so one bad element is one issue.
    """

    CHUNK = 1 << 16
    # `raw_decode` cannot tell a value cut off by the end of the buffer from a broken one. A
    # cut-off value fails within its last token (a literal, a number) or as an unterminated string,
    # so only those failures read more; any other failure is a real error, found without reading on.
    NEAR_END = 64

    def __init__(self, handle: BinaryIO):
        self._handle = handle
        self._text = codecs.getincrementaldecoder("utf-8")("surrogateescape")
        self._json = json.JSONDecoder()
        self.buf, self.pos, self.line, self.eof = "", 0, 1, False
        self._bytes_before = 0  # file bytes before buf[0], for byte offsets in messages
        self._column_before = 0  # characters of buf[0]'s line that were already dropped

    def skip_bom(self) -> bool:
        """Step over a byte-order mark at the start; whether there was one."""
        while not self.buf and not self.eof:
            self._fill()
        has_bom = self.buf.startswith("\ufeff")
        self.pos += 1 if has_bom else 0
        return has_bom

    def peek(self) -> str:
        """The next character after whitespace ("" at the end of the file), without taking it."""
        while True:
            spaces = _WHITESPACE.match(self.buf, self.pos)
            assert spaces is not None  # the pattern matches everywhere, if only the empty string
            self.advance(spaces.end() - self.pos)
            if self.pos < len(self.buf) or self.eof:
                return self.buf[self.pos : self.pos + 1]
            self._fill()

    def take(self, char: str) -> None:
        if self.peek() != char:
            raise self.broken(f"expected {char!r}", self.pos)
        self.advance(1)

    def advance(self, count: int) -> None:
        self.line += self.buf.count("\n", self.pos, self.pos + count)
        self.pos += count

    def value(self) -> tuple[int, Any, int | None]:
        """The next value as (line it starts on, value, byte offset of its first invalid byte or None)."""
        self.peek()
        line = self.line
        while True:
            try:
                value, end = self._json.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as err:
                truncated = err.pos >= len(self.buf) - self.NEAR_END or err.msg.startswith("Unterminated string")
                if self.eof or not truncated:
                    raise self.broken(_reason(err), err.pos) from None
                self._fill()
                continue
            if end < len(self.buf) or self.eof:  # at the buffer's end a number may go on: read more
                break
            self._fill()
        bad = _ESCAPED_BYTE.search(self.buf, self.pos, end)
        bad_offset = None if bad is None else self._bytes_before + _byte_length(self.buf[: bad.start()])
        self.advance(end - self.pos)
        return line, value, bad_offset

    def broken(self, message: str, pos: int) -> _StopReading:
        line = self.line + self.buf.count("\n", self.pos, pos)
        newline = self.buf.rfind("\n", 0, pos)
        column = pos - newline if newline >= 0 else self._column_before + pos + 1
        return _StopReading(
            "invalid_json",
            line,
            f"invalid JSON: {message} (column {column}); the rest of the file was not read",
            "fix the JSON here; a missing comma or quote?",
        )

    def shape_error(self, message: str) -> _StopReading:
        return _StopReading(
            "unsupported_json_shape", self.line, f"{message}; the rest of the file was not read", _JSON_SHAPE_HINT
        )

    def _fill(self) -> None:
        """Drop what was consumed and read on; reads grow with the buffer so a huge element costs O(n)."""
        consumed = self.buf[: self.pos]
        self._bytes_before += _byte_length(consumed)
        newline = consumed.rfind("\n")
        self._column_before = len(consumed) - newline - 1 if newline >= 0 else self._column_before + len(consumed)
        data = self._handle.read(max(self.CHUNK, len(self.buf)))
        self.buf = self.buf[self.pos :] + self._text.decode(data, final=not data)
        self.pos, self.eof = 0, not data


def _byte_length(text: str) -> int:
    return len(text.encode("utf-8", "surrogateescape"))


def json_rows(path: Path) -> Iterator[RawRow]:
    """Rows of a JSON file: an array of objects, {"KEY": [objects]}, or columns of equal length.

    The line of a row is the line its element starts on (for columns: its value in the first column).
    """
    label = str(path)
    with path.open("rb") as handle:
        cursor = _JsonCursor(handle)
        has_bom = cursor.skip_bom()
        try:
            for line, value, bad_offset in _top_level_rows(cursor):
                where = Provenance(label, line)
                if bad_offset is not None:
                    yield error_row(where, "invalid_utf8", f"invalid UTF-8 at byte offset {bad_offset}", UTF8_HINT)
                else:
                    yield _object_row(where, value, _bom_warning(where) if has_bom else None)
                has_bom = False
        except _StopReading as stop:
            yield error_row(Provenance(label, stop.line), stop.code, stop.message, stop.hint)


def _top_level_rows(cursor: _JsonCursor) -> Iterator[tuple[int, Any, int | None]]:
    first = cursor.peek()
    if first == "":
        return
    if first not in "[{":
        raise cursor.shape_error("expected a JSON array of objects or an object holding rows")
    cursor.advance(1)
    yield from _array_items(cursor) if first == "[" else _object_rows(cursor)
    if cursor.peek() != "":
        raise cursor.broken("extra data after the top-level value", cursor.pos)


def _array_items(cursor: _JsonCursor) -> Iterator[tuple[int, Any, int | None]]:
    """The elements of an array whose "[" was just taken, up to and including its "]"."""
    if cursor.peek() == "]":
        cursor.advance(1)
        return
    while True:
        yield cursor.value()
        separator = cursor.peek()
        if separator == "]":
            cursor.advance(1)
            return
        if separator != ",":
            raise cursor.broken("expected ',' or ']' after an element", cursor.pos)
        cursor.advance(1)


def _object_rows(cursor: _JsonCursor) -> Iterator[tuple[int, Any, int | None]]:
    """Rows of an object whose "{" was just taken: streamed from one key's list of objects, or columns."""
    if cursor.peek() == "}":
        cursor.advance(1)
        return
    key = _object_key(cursor)
    if cursor.peek() != "[":
        raise cursor.shape_error(f"expected the value of {key!r} to be a list of rows or a column")
    cursor.advance(1)
    if cursor.peek() == "{":  # {"KEY": [{...}, ...]}: the rows themselves, streamed
        yield from _array_items(cursor)
        if cursor.peek() != "}":
            raise cursor.shape_error(f"expected only the key {key!r} holding the rows, but more keys follow")
        cursor.advance(1)
        return
    yield from _columnar_rows(cursor, key, list(_array_items(cursor)))


def _object_key(cursor: _JsonCursor) -> str:
    if cursor.peek() != '"':
        raise cursor.broken("expected a string key", cursor.pos)
    _, key, _ = cursor.value()
    cursor.take(":")
    return key


def _columnar_rows(
    cursor: _JsonCursor, first_key: str, first: list[tuple[int, Any, int | None]]
) -> Iterator[tuple[int, Any, int | None]]:
    """Rows {key: column[i]} of {"a": [...], "b": [...]} once every column is read.

    Columns are held whole (a row is only complete once the last column is read), so memory here
    grows with the file, unlike the array forms.
    """
    columns = {first_key: [value for _, value, _ in first]}
    while cursor.peek() == ",":
        cursor.advance(1)
        key = _object_key(cursor)
        line, column, bad_offset = cursor.value()
        if bad_offset is not None:
            raise _StopReading(
                "invalid_utf8",
                line,
                f"invalid UTF-8 at byte offset {bad_offset} in column {key!r}; the rest of the file was not read",
                UTF8_HINT,
            )
        if not isinstance(column, list) or len(column) != len(first):
            found = str(len(column)) if isinstance(column, list) else f"a {_json_type(column)}"
            raise _StopReading(
                "unsupported_json_shape",
                line,
                f"read as columns, {first_key!r} has {len(first)} "
                f"values but {key!r} has {found}; the rest of the file was not read",
                _JSON_SHAPE_HINT,
            )
        columns[key] = column
    cursor.take("}")
    for index, (line, _, bad_offset) in enumerate(first):
        yield line, {key: column[index] for key, column in columns.items()}, bad_offset


# --- CSV / TSV -----------------------------------------------------------------------------------
