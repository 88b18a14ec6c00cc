"""Where training data comes from: a reference in, rows with file:line out.

A reference is a file path (.jsonl/.ndjson, .json, .csv, .tsv, .parquet), a folder written by
`datasets`' `save_to_disk`, `bundled:NAME/FILE` (data shipped in the package, for the quick
start) or `hf:NAME[:SPLIT]` (a Hugging Face hub dataset, streamed). Every source yields a `RawRow`
per row and never raises for a bad row; only a source that cannot be used at all is a `UserError`.
Text files are read by `data/readers.py`; the Arrow-backed kinds (Parquet, datasets folder, hub),
whose "line" is a row number, are a few lines each over pyarrow and `datasets`, here.

>>> [row.data["messages"][-1]["role"] for row in iter_rows("bundled:smart_home/test.jsonl")][:2]
['assistant', 'assistant']
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Literal

from tunesmith.data import csv_reader, readers
from tunesmith.data.types import Provenance, RawRow
from tunesmith.errors import UserError

BUNDLED_PREFIX = "bundled:"
HUB_PREFIX = "hf:"
HUB_DEFAULT_SPLIT = "train"  # what hub datasets almost always name their training rows

SourceKind = Literal["jsonl", "json", "csv", "tsv", "parquet", "hf_disk", "hf_hub"]
FileKind = Literal["jsonl", "json", "csv", "tsv", "parquet"]
_KIND_BY_SUFFIX: dict[str, FileKind] = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
}
_TEXT_READERS: dict[str, Callable[[Path], Iterator[RawRow]]] = {
    "jsonl": readers.jsonl_rows,
    "json": readers.json_rows,
    "csv": csv_reader.csv_rows,
    "tsv": partial(csv_reader.csv_rows, delimiter="\t"),
}
_SUPPORTED = ".jsonl, .json, .csv, .tsv, .parquet, a datasets folder, hf:NAME"
_DATASET_MARKERS = ("dataset_info.json", "state.json")  # what `Dataset.save_to_disk` writes
_DATASET_DICT_MARKER = "dataset_dict.json"  # what `DatasetDict.save_to_disk` writes, one folder per split


@dataclass(frozen=True)
class Source:
    """An opened data reference: what kind it is and where it lives; reading happens in `rows()`.

    For `hf_disk`, `path` is the split folder read (a DatasetDict's only split, if given its root).
    For `hf_hub`, `path` is None and the dataset is named by `reference`.
    """

    reference: str
    kind: SourceKind
    path: Path | None

    @property
    def label(self) -> str:
        """The file name every row's `Provenance` carries: the path read, or hf:NAME:SPLIT."""
        if self.path is not None:
            return str(self.path)
        name, split = parse_hub_reference(self.reference)
        return f"{HUB_PREFIX}{name}:{split}"

    def rows(self) -> Iterator[RawRow]:
        """Every row in order, streamed. A bad row is a `RawRow` with an issue, never an exception.

        Raises `UserError` (before the first row) only when the whole source cannot be read: a hub
        dataset that cannot be reached, an unreadable datasets folder, Parquet file or CSV header.
        """
        if self.kind == "hf_hub":
            return _hub_rows(self.reference, self.label)
        assert self.path is not None  # open_source sets a path for every local kind
        if self.kind == "hf_disk":
            return _disk_rows(self.reference, self.path)
        if self.kind == "parquet":
            return _parquet_rows(self.path)
        return _TEXT_READERS[self.kind](self.path)

    def fingerprint(self) -> str:
        """What the rows were read from, to tell whether data changed since a run (e.g. on resume).

        The sha256 of the file's bytes, or of a datasets folder's data files; a hub dataset is only
        named ("hf:NAME:SPLIT"), since hashing it would mean downloading it.
        """
        if self.kind == "hf_hub":
            return self.label
        assert self.path is not None
        digest = hashlib.sha256()
        if self.kind != "hf_disk":
            for chunk in _file_chunks(self.path):
                digest.update(chunk)
            return digest.hexdigest()
        for data_file in sorted(self.path.rglob("*.arrow")):
            digest.update(data_file.relative_to(self.path).as_posix().encode() + b"\0")
            for chunk in _file_chunks(data_file):
                digest.update(chunk)
        return digest.hexdigest()


def open_source(reference: str) -> Source:
    """Check a data reference without reading rows: it exists and is a kind we read.

    >>> open_source("bundled:smart_home/test.jsonl").kind
    'jsonl'
    """
    if reference.startswith(HUB_PREFIX):
        parse_hub_reference(reference)
        return Source(reference, "hf_hub", None)
    path = _local_path(reference)
    if path.is_dir():
        return Source(reference, "hf_disk", _datasets_split_folder(reference, path))
    kind = _KIND_BY_SUFFIX.get(path.suffix.lower())
    if kind is None:
        raise UserError(f"{reference}: unsupported file type {path.suffix!r} (supported: {_SUPPORTED})")
    return Source(reference, kind, path)


def iter_rows(reference: str) -> Iterator[RawRow]:
    """Every row of a data reference, streamed: `open_source(reference).rows()`."""
    return open_source(reference).rows()


def resolve_data_path(reference: str) -> Path:
    """Turn a data reference into an existing file path, or fail naming it.

    >>> resolve_data_path("bundled:smart_home/test.jsonl").name
    'test.jsonl'
    """
    path = _local_path(reference)
    if not path.is_file():
        raise UserError(f"{reference}: a folder, expected a data file")
    return path


def parse_hub_reference(reference: str) -> tuple[str, str]:
    """The dataset name and split of `hf:NAME[:SPLIT]`.

    >>> parse_hub_reference("hf:tatsu-lab/alpaca"), parse_hub_reference("hf:org/set:test")
    (('tatsu-lab/alpaca', 'train'), ('org/set', 'test'))
    """
    name, has_split, split = reference[len(HUB_PREFIX) :].partition(":")
    if not name or (has_split and not split) or ":" in split:
        raise UserError(
            f"{reference}: expected {HUB_PREFIX}NAME or {HUB_PREFIX}NAME:SPLIT (e.g. hf:tatsu-lab/alpaca:train)"
        )
    return name, split or HUB_DEFAULT_SPLIT


def _local_path(reference: str) -> Path:
    """An existing file or folder for a path or `bundled:` reference."""
    if reference.startswith(BUNDLED_PREFIX):
        bundled = Path(str(resources.files("tunesmith") / "data" / "bundled"))
        path = bundled / reference[len(BUNDLED_PREFIX) :]
        if not path.is_file():
            known = sorted(p.name for p in bundled.iterdir() if p.is_dir()) if bundled.is_dir() else []
            raise UserError(f"bundled data not found: {reference} (bundled sets: {', '.join(known)})")
        return path
    path = Path(reference).expanduser()
    if not path.exists():
        raise UserError(f"data file not found: {reference}")
    return path


def _datasets_split_folder(reference: str, folder: Path) -> Path:
    """The folder of rows to read: a saved Dataset itself, or a saved DatasetDict's only split.

    A DatasetDict with several splits is refused rather than guessed: training on `test` by
    accident is worse than one more path segment.
    """
    if any((folder / marker).is_file() for marker in _DATASET_MARKERS):
        return folder
    if not (folder / _DATASET_DICT_MARKER).is_file():
        raise UserError(
            f"{reference}: a folder, but not one saved by datasets (no dataset_info.json, state.json "
            f"or dataset_dict.json); point at a data file (supported: {_SUPPORTED})"
        )
    try:
        splits = [str(split) for split in json.loads((folder / _DATASET_DICT_MARKER).read_text("utf-8"))["splits"]]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"{reference}: unreadable datasets folder: {_DATASET_DICT_MARKER}: {err}") from None
    if len(splits) == 1:
        return folder / splits[0]
    example = HUB_DEFAULT_SPLIT if HUB_DEFAULT_SPLIT in splits else (splits or ["SPLIT"])[0]
    raise UserError(
        f"{reference}: a saved DatasetDict with splits {', '.join(splits) or '(none)'}; "
        f"point at one split's folder, e.g. {folder / example}"
    )


def _parquet_rows(path: Path) -> Iterator[RawRow]:
    """Rows of a Parquet file, a batch at a time; the line is the row number. Nested values stay nested."""
    import pyarrow as pa  # imported here: slow to import, and only Parquet needs it directly
    import pyarrow.parquet as pq

    number = 0
    try:
        with pq.ParquetFile(path) as parquet:
            for batch in parquet.iter_batches(batch_size=1024):
                for row in batch.to_pylist():
                    number += 1
                    yield RawRow(Provenance(str(path), number), row)
    except pa.ArrowException as err:
        problem = "not a readable Parquet file" if number == 0 else f"cannot read Parquet after row {number}"
        raise UserError(f"{path}: {problem}: {_first_line(err)}") from err


def _hub_rows(reference: str, label: str) -> Iterator[RawRow]:
    """Rows of a hub dataset, streamed; the line is the row number."""
    import datasets  # imported here: slow to import, and only hub and datasets folders need it

    name, split = parse_hub_reference(reference)
    try:
        dataset = datasets.load_dataset(name, split=split, streaming=True)
    except Exception as err:  # the hub, fsspec and datasets raise many types; each means "cannot use it"
        raise UserError(f"{reference}: could not load from the Hugging Face hub: {_first_line(err)}") from err
    yield from _numbered_rows(dataset, label, reference)


def _disk_rows(reference: str, folder: Path) -> Iterator[RawRow]:
    """Rows of a `save_to_disk` folder (memory-mapped, so iterating does not load it); line = row number."""
    import datasets

    try:
        dataset = datasets.load_from_disk(str(folder))
    except Exception as err:  # corrupt or foreign files surface as many error types
        raise UserError(f"{reference}: unreadable datasets folder: {_first_line(err)}") from err
    yield from _numbered_rows(dataset, str(folder), reference)


def _numbered_rows(dataset: Iterable[dict], label: str, reference: str) -> Iterator[RawRow]:
    rows, number = iter(dataset), 0
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except Exception as err:  # a lost connection or a corrupt shard ends the source, not one row
            raise UserError(f"{reference}: reading stopped after row {number}: {_first_line(err)}") from err
        number += 1
        yield RawRow(Provenance(label, number), dict(row))


def _file_chunks(path: Path) -> Iterator[bytes]:
    """A file's bytes in 1 MiB pieces, so hashing a large file keeps memory flat."""
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            yield chunk


def _first_line(error: BaseException) -> str:
    """The first non-empty line of an error's message (or its type), for one-line `UserError`s.

    >>> _first_line(ValueError("\\nBad split: x\\nmore"))
    'Bad split: x'
    """
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__
