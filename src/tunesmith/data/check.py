"""Check every row of every file up front and say exactly what is wrong and where.

Fine-tuning tools tend to abort on the first bad row, drop rows silently, or print counts with no
line numbers. `check_files` streams all rows instead: unreadable rows, rows no format adapter can
normalize, rows that make no sense to train on, duplicates, test rows that also appear in train,
and (given a tokenizer) rows too long or training nothing, each an `Issue` at file:line and field.
`classify_row` is the per-row part, shared with the training loader's bad-row policy.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from itertools import islice
from typing import Any

from tunesmith.data.formats import detect_format, to_sample
from tunesmith.data.keys import content_key, near_key
from tunesmith.data.options import FormatOptions
from tunesmith.data.preference import (
    PREFERENCE_FORMATS,
    KtoSample,
    PreferencePair,
    PreferenceSample,
    check_preference,
    detect_preference_format,
    to_preference,
)
from tunesmith.data.sources import open_source
from tunesmith.data.stats import CHUNK_ROWS, Measure, Measured, Measurer, Stats, StatsAccumulator
from tunesmith.data.types import Issue, Provenance, RawRow, RowError, Sample, Severity
from tunesmith.data.validate import check_sample

SEVERITIES: tuple[Severity, ...] = ("error", "warning")
AnySample = Sample | PreferenceSample
TRAIN = "train"


def classify_row(raw: RawRow, fmt: str, options: FormatOptions) -> tuple[Sample | None, list[Issue]]:
    """One row through the source's verdict, the format adapter and the sample rules.

    The sample is None exactly when one of the issues is an error; warnings come with a sample.
    """
    issues = [raw.issue] if raw.issue is not None else []
    if raw.data is None:
        return None, issues
    try:
        sample = to_sample(raw.data, raw.where, fmt, options)
    except RowError as err:
        return None, [*issues, err.issue]
    issues += check_sample(sample)
    return (None if has_error(issues) else sample), issues


def classify_preference_row(
    raw: RawRow, fmt: str, options: FormatOptions
) -> tuple[PreferenceSample | None, list[Issue]]:
    """`classify_row` for preference rows: the format's reader, then `check_preference`."""
    issues = [raw.issue] if raw.issue is not None else []
    if raw.data is None:
        return None, issues
    try:
        sample = to_preference(raw.data, raw.where, fmt, options)
    except RowError as err:
        return None, [*issues, err.issue]
    issues += check_preference(sample)
    return (None if has_error(issues) else sample), issues


def has_error(issues: list[Issue]) -> bool:
    return any(issue.severity == "error" for issue in issues)


class FileStream:
    """One file's rows, format detected on its first readable row and stated once.

    Iterating yields `(raw, sample or None, issues)` per row. A row whose format cannot be told
    is an `unknown_format` issue and detection moves on to the next readable row.
    """

    def __init__(self, reference: str, options: FormatOptions, *, preference: bool = False):
        self.reference = reference
        self.options = options
        self.source = open_source(reference)
        self.format: str | None = None
        self.reason = ""
        self.rows = 0
        self.preference = preference
        """Whether preference rows (data/preference.py) are read; otherwise they are refused as chat data."""

    @property
    def holds_preferences(self) -> bool:
        return self.format in PREFERENCE_FORMATS

    def __iter__(self) -> Iterator[tuple[RawRow, AnySample | None, list[Issue]]]:
        for raw in self.source.rows():
            self.rows += 1
            if self.format is None and raw.data is not None:
                reads_preference = self.preference and self.options.format == "auto"
                found = detect_preference_format(raw.data) if reads_preference else None
                try:
                    self.format, self.reason = found or detect_format(raw.data, raw.where, self.options)
                except RowError as err:
                    yield raw, None, [*([raw.issue] if raw.issue else []), err.issue]
                    continue
            if self.format is None:
                yield raw, None, [raw.issue] if raw.issue else []
                continue
            if self.holds_preferences:
                yield (raw, *classify_preference_row(raw, self.format, self.options))
                continue
            yield (raw, *classify_row(raw, self.format, self.options))

    def empty_file_issue(self) -> Issue:
        label = str(self.source.path) if self.source.path is not None else self.reference  # as its rows name it
        return Issue(
            "empty_file", "error", Provenance(label, 0), "", "the file has no rows", "line 0 means the file as a whole"
        )


@dataclass(frozen=True)
class FileReport:
    reference: str
    kind: str
    format: str
    reason: str
    rows: int
    fingerprint: str
    split: str | None
    errors: int
    warnings: int


@dataclass
class Report:
    """Everything `check_files` found: per-file facts, every issue in file order, statistics."""

    files: list[FileReport]
    issues: list[Issue]
    stats: Stats

    @property
    def counts_by_code(self) -> dict[str, int]:
        return dict(Counter(issue.code for issue in self.issues))

    @property
    def counts_by_severity(self) -> dict[str, int]:
        counts = Counter(issue.severity for issue in self.issues)
        return {severity: counts.get(severity, 0) for severity in SEVERITIES}

    def failed(self, fail_on: str = "error") -> bool:
        """Whether the data should stop a run: any error, or with `fail_on="warning"` any issue at all."""
        if fail_on not in SEVERITIES:
            raise ValueError(f"fail_on must be 'error' or 'warning', not {fail_on!r}")
        counts = self.counts_by_severity
        return counts["error"] > 0 or (fail_on == "warning" and counts["warning"] > 0)

    def to_json(self) -> dict[str, Any]:
        return {
            "files": [asdict(f) for f in self.files],
            "counts": self.counts_by_severity,
            "counts_by_code": self.counts_by_code,
            "issues": [issue.as_dict() for issue in self.issues],
            "stats": self.stats.to_json(),
        }


@dataclass
class _Seen:
    """First occurrence of each content key and near key, per split; 16 bytes of hash each."""

    exact: dict[bytes, Provenance] = field(default_factory=dict)
    near: dict[bytes, Provenance] = field(default_factory=dict)


def check_files(
    references: list[str],
    *,
    options: FormatOptions,
    measure: Measure | None = None,
    max_length: int | None = None,
    splits: dict[str, str] | None = None,
    workers: int | None = None,
) -> Report:
    """Check every row of every file; issues come back in the order the files were given.

    `splits` maps a reference to its split name; rows of any other split that also appear in a
    `train` file are `split_overlap` warnings. Files without a split share one, for duplicates.
    With `measure`, rows are encoded in `workers` processes (default: one per CPU, at most 8).
    """
    splits = splits or {}
    stats = StatsAccumulator(max_length=max_length)
    seen: dict[str, _Seen] = {}
    results: dict[int, tuple[FileReport, list[Issue]]] = {}
    with Measurer(measure, max_length, workers) as measurer:
        # Train files first, so an overlap is found when the test row is read, whatever the order given.
        for index in sorted(range(len(references)), key=lambda i: splits.get(references[i]) != TRAIN):
            reference = references[index]
            split = splits.get(reference)
            stream = FileStream(reference, options, preference=True)
            issues = _check_stream(stream, seen, split, stats, measurer)
            counts = Counter(issue.severity for issue in issues)
            results[index] = (
                FileReport(
                    reference,
                    stream.source.kind,
                    stream.format or "unknown",
                    stream.reason,
                    stream.rows,
                    stream.source.fingerprint(),
                    split,
                    counts["error"],
                    counts["warning"],
                ),
                issues,
            )
    ordered = [results[i] for i in range(len(references))]
    return Report([f for f, _ in ordered], [issue for _, issues in ordered for issue in issues], stats.result())


def _check_stream(
    stream: FileStream, seen: dict[str, _Seen], split: str | None, stats: StatsAccumulator, measurer: Measurer
) -> list[Issue]:
    """A file's rows in chunks. Each chunk's samples are sent to be encoded, and while that runs the
    next chunk is read and classified; then the chunk's rows get token, duplicate and overlap
    checks, in file order."""
    issues: list[Issue] = []
    own = seen.setdefault(split or "", _Seen())
    train = seen.get(TRAIN) if split not in (None, TRAIN) else None
    pending: list[tuple[list, Callable[[], list]]] = []
    for chunk in _chunks(((sample, row_issues) for _, sample, row_issues in stream), CHUNK_ROWS):
        samples = [sample for sample, _ in chunk if sample is not None]
        pending.append((chunk, measurer.submit(samples)))
        if len(pending) > 1:
            issues += _finish_chunk(*pending.pop(0), stream.format, own, train, measurer, stats)
    for chunk, results in pending:
        issues += _finish_chunk(chunk, results, stream.format, own, train, measurer, stats)
    if stream.rows == 0:
        issues.append(stream.empty_file_issue())
    return issues


def _finish_chunk(
    chunk: list[tuple[AnySample | None, list[Issue]]],
    results: Callable[[], list],
    fmt: str | None,
    own: _Seen,
    train: _Seen | None,
    measurer: Measurer,
    stats: StatsAccumulator,
) -> list[Issue]:
    issues: list[Issue] = []
    measured = iter(results())
    for sample, row_issues in chunk:
        stats.add_row()
        if sample is not None:
            if measurer.active:
                row_issues += _token_issues(sample, next(measured), measurer.max_length, stats)
            row_issues += _repeats(sample, own, train)
            if not has_error(row_issues):
                stats.add_sample(sample, fmt or "unknown")
        issues += row_issues
    return issues


def _chunks(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    """Lists of up to `size` items.

    >>> list(_chunks(iter(range(5)), 2))
    [[0, 1], [2, 3], [4]]
    """
    while chunk := list(islice(items, size)):
        yield chunk


def _repeats(sample: AnySample, own: _Seen, train: _Seen | None) -> list[Issue]:
    """Duplicate and near-duplicate of an earlier row of the same split; overlap with train."""
    exact, near = _short(content_key(sample)), _short(near_key(sample))
    issues = []
    if train is not None and (first := train.exact.get(exact) or train.near.get(near)) is not None:
        issues.append(
            Issue(
                "split_overlap",
                "warning",
                sample.source,
                "",
                f"also in the training data at {first}",
                "a held-out row seen in training makes its scores look better than they are",
            )
        )
    if (first := own.exact.get(exact)) is not None:
        issues.append(
            Issue(
                "duplicate",
                "warning",
                sample.source,
                "",
                f"duplicate of {first}",
                "repeated rows weigh more in training; remove it if that is not intended",
            )
        )
    elif (first := own.near.get(near)) is not None:
        issues.append(
            Issue(
                "near_duplicate",
                "warning",
                sample.source,
                "",
                f"same as {first} except for case, spacing or punctuation",
                "remove one of them",
            )
        )
    own.exact.setdefault(exact, sample.source)
    own.near.setdefault(near, sample.source)
    return issues


def _short(key: str) -> bytes:
    """128 bits of a sha256 hex key: collision-free in practice, a third of the memory of the text."""
    return bytes.fromhex(key[:32])


def _token_issues(
    sample: AnySample, measured: Measured | str, max_length: int | None, stats: StatsAccumulator
) -> list[Issue]:
    """Rows the template refuses, rows that train nothing, rows max_length cuts, double BOS."""
    if isinstance(measured, str) and measured.startswith("too long: "):  # the row, not the template
        reason, _, hint = measured.removeprefix("too long: ").partition("; ")
        return [Issue("too_long", "error", sample.source, "", reason, hint)]
    if isinstance(measured, str):  # the chat template refused this conversation (e.g. roles out of order)
        return [
            Issue(
                "render_failed",
                "error",
                sample.source,
                "",
                measured,
                "the model's chat template cannot render this row",
            )
        ]
    stats.add_measured(measured)
    if measured.trainable == 0:
        return [
            Issue(
                "no_trainable_tokens",
                "error",
                sample.source,
                "",
                "no token of this row trains",
                "check train_on and that the template renders the assistant text",
            )
        ]
    issues = []
    if measured.double_bos:
        issues.append(
            Issue(
                "double_bos",
                "warning",
                sample.source,
                "",
                "the tokens start with two BOS tokens",
                "the template writes BOS itself; remove the BOS text from the data",
            )
        )
    if max_length is None or not measured.tokens_cut:
        return issues
    message = f"{measured.longest} tokens, max_length {max_length}: {measured.tokens_cut} tokens would be cut"
    if isinstance(sample, (PreferencePair, KtoSample)):  # an answer is scored whole or not at all
        return [
            *issues,
            Issue(
                "too_long",
                "error",
                sample.source,
                "",
                f"too long: {message}; a preference answer is scored whole, so training refuses this row",
                "raise template.max_length, or set data.on_bad_row: skip to leave such rows out",
            ),
        ]
    if measured.trainable_cut >= measured.trainable:
        return [
            *issues,
            Issue(
                "nothing_trains_after_cut",
                "error",
                sample.source,
                "",
                f"too long: {message}, and with them every trained token (the prompt fills max_length)",
                "raise max_length or shorten the prompt; data.on_bad_row: skip leaves such rows out",
            ),
        ]
    return [*issues, Issue("too_long", "warning", sample.source, "", message, "raise max_length or shorten the row")]
