"""CSV and TSV rows with file:line provenance: the header row names the fields, a row of the wrong width
or an undecodable byte is an error row naming its line."""

from __future__ import annotations

import codecs
import csv
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from tunesmith.data.readers import UTF8_HINT, error_row
from tunesmith.data.types import Provenance, RawRow
from tunesmith.errors import UserError


class _LineFeed:
    """Physical lines of a byte stream as text for `csv.reader`, noting the first bad byte of a record.

    Decoding line by line (not the whole file) keeps one bad byte from failing every later row.
    """

    def __init__(self, handle: BinaryIO):
        self._handle = handle
        self._offset = 0
        self.bad_offset: int | None = None

    def __iter__(self) -> _LineFeed:
        return self

    def __next__(self) -> str:
        raw = next(self._handle)
        start, self._offset = self._offset, self._offset + len(raw)
        if start == 0 and raw.startswith(codecs.BOM_UTF8):
            # Excel writes a BOM before CSV and every CSV reader accepts it: drop it silently.
            raw, start = raw[len(codecs.BOM_UTF8) :], len(codecs.BOM_UTF8)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as err:
            if self.bad_offset is None:
                self.bad_offset = start + err.start
            return raw.decode("utf-8", "surrogateescape")


def csv_rows(path: Path, delimiter: str = ",") -> Iterator[RawRow]:
    """Rows of a CSV (or, with a tab delimiter, TSV) file as {column: text}, empty cells as "".

    The first record is the header; a row's line is where its record starts (quoted cells may span
    lines). Cells stay text: format adapters parse JSON where they expect a structured value.
    """
    # csv caps a field at 128 KiB process-wide; long documents in one cell are normal for training
    # data, so lift the cap (to the largest value a C long holds on every platform).
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
    label = str(path)
    with path.open("rb") as handle:
        feed = _LineFeed(handle)
        records = csv.reader(feed, delimiter=delimiter)
        header = _csv_header(records, feed, path)
        while True:
            start, feed.bad_offset = records.line_num + 1, None
            try:
                fields = next(records)
            except StopIteration:
                return
            except csv.Error as err:
                yield error_row(Provenance(label, start), "bad_csv_row", f"unreadable CSV record: {err}")
                continue
            if fields:  # [] is a blank line
                yield _csv_row(header, fields, Provenance(label, start), feed.bad_offset)


def _csv_header(records: Iterator[list[str]], feed: _LineFeed, path: Path) -> list[str]:
    """The column names; a header that cannot be read makes the whole file unusable."""
    try:
        header = next((fields for fields in records if fields), [])
    except csv.Error as err:
        raise UserError(f"{path}: cannot read the CSV header: {err}") from None
    if feed.bad_offset is not None:
        raise UserError(f"{path}: the header is not valid UTF-8 (byte offset {feed.bad_offset}); {UTF8_HINT}")
    duplicates = sorted({name for name in header if header.count(name) > 1})
    if duplicates:
        raise UserError(f"{path}: the header names a column more than once: {', '.join(duplicates)}")
    return header


def _csv_row(header: list[str], fields: list[str], where: Provenance, bad_offset: int | None) -> RawRow:
    if bad_offset is not None:
        return error_row(where, "invalid_utf8", f"invalid UTF-8 at byte offset {bad_offset}", UTF8_HINT)
    if len(fields) > len(header):
        return error_row(
            where,
            "bad_csv_row",
            f"the record has {len(fields)} fields but the header has {len(header)}",
            "quote cells that contain the delimiter",
        )
    return RawRow(where, dict(zip(header, fields)))
