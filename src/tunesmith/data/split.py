"""Split data into train, validation and test by content hash: deterministic and stable.

Each row's split depends on its own content and the seed only, never on its position or on the
other rows. So re-running gives the same split, and adding rows never moves an old row to another
split. The hash is taken over `near_key`, so exact duplicates, and rows differing only in case,
spacing or punctuation, land in the same split by construction: no leak from train into test.

Test takes the bottom of [0, 1) and validation the top, so raising one fraction only moves rows
out of train, never between the held-out splits.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from tunesmith.data.check import AnySample, has_error
from tunesmith.data.convert import good_samples, jsonl_line, sample_to_row
from tunesmith.data.keys import near_key
from tunesmith.data.options import FormatOptions
from tunesmith.data.preference import KtoSample, PreferencePair
from tunesmith.data.types import Conversation, Issue
from tunesmith.errors import UserError
from tunesmith.runfolder import AtomicFiles

SPLITS = ("train", "validation", "test")


def position(key: str, seed: str = "") -> float:
    """A number in [0, 1) fixed by a content key and the seed.

    >>> position("abc") == position("abc"), 0 <= position("abc") < 1, position("abc") != position("abc", "1")
    (True, True, True)
    """
    digest = hashlib.sha256(f"{seed}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign(point: float, *, validation: float, test: float) -> str:
    """The split of a position: test at the bottom, validation at the top, train between.

    >>> [assign(point, validation=0.1, test=0.05) for point in (0.01, 0.5, 0.95)]
    ['test', 'train', 'validation']
    """
    if point < test:
        return "test"
    if point >= 1.0 - validation:
        return "validation"
    return "train"


@dataclass
class SplitSummary:
    out_dir: Path
    written: bool
    """False when bad rows stopped the output (and `keep_good` was off)."""
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    rows: int = 0
    bad: list[Issue] = field(default_factory=list)
    paths: dict[str, Path] = field(default_factory=dict)
    files: list[tuple[str, str, str]] = field(default_factory=list)
    """(reference, detected format, why) per input file."""


def split_files(
    references: list[str],
    out_dir: str | Path,
    *,
    validation: float,
    test: float,
    options: FormatOptions,
    seed: str = "",
    keep_good: bool = False,
) -> SplitSummary:
    """Write `train.jsonl` and, when their fraction is above 0, `validation.jsonl` and `test.jsonl`
    (normalized JSONL, as `convert` writes) to `out_dir`, all or nothing."""
    _check_fractions(validation, test)
    fractions = {"train": 1.0, "validation": validation, "test": test}
    summary = SplitSummary(Path(out_dir), written=False)
    summary.paths = {name: summary.out_dir / f"{name}.jsonl" for name in SPLITS if fractions[name] > 0}
    with AtomicFiles(list(summary.paths.values())) as files:
        for sample in good_samples(references, options, summary):
            name = assign(position(_split_key(sample), seed), validation=validation, test=test)
            if keep_good or not summary.bad:  # once a row is bad the output is lost: stop writing it
                files.write(summary.paths[name], jsonl_line(sample_to_row(sample)))
            summary.counts[name] += 1
        if keep_good or not has_error(summary.bad):
            files.commit()
            summary.written = True
    return summary


def _split_key(sample: AnySample) -> str:
    """Rows go to a split by their content; preference rows by their prompt alone, so that two
    pairs (or KTO answers) for one prompt never sit on both sides of a split."""
    if isinstance(sample, (PreferencePair, KtoSample)):
        return near_key(Conversation(sample.prompt, sample.source, tools=sample.tools))
    return near_key(sample)


def _check_fractions(validation: float, test: float) -> None:
    for name, value in (("validation", validation), ("test", test)):
        if not 0.0 <= value < 1.0:
            raise UserError(f"--{name}: expected a fraction in [0, 1), got {value}")
    if validation + test >= 1.0:
        raise UserError(f"--validation {validation} and --test {test} leave nothing for train (their sum must be < 1)")
