"""Load a split for training: every row through the same per-row checks as `tunesmith data check`,
files mixed by weight, bad rows handled by one policy.

With `on_bad_row: fail` every row is still read, so the error can say how many rows are bad and
name the first one (file:line, field); nothing is trained and no model is loaded. With `skip`,
bad rows are left out, counted, and handed back for the run's quarantine file.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from tunesmith.data.check import FileStream
from tunesmith.data.options import FormatOptions
from tunesmith.data.preference import KtoSample, PreferencePair
from tunesmith.data.types import Conversation, Issue, RawRow, Sample
from tunesmith.errors import UserError


@dataclass(frozen=True)
class SourceSpec:
    reference: str
    weight: float = 1.0
    options: FormatOptions = field(default_factory=FormatOptions)


@dataclass
class FileSummary:
    reference: str
    kind: str
    format: str
    reason: str
    rows: int
    used: int
    fingerprint: str


@dataclass
class LoadedSplit:
    samples: list[Sample]
    warnings: list[Issue]
    quarantined: list[tuple[RawRow, list[Issue]]]
    files: list[FileSummary]

    def conversations(self) -> list[Conversation]:
        return [s for s in self.samples if isinstance(s, Conversation)]


def load_split(specs: list[SourceSpec], *, split: str, policy: str, seed: int, preference: bool = False) -> LoadedSplit:
    """Read every file of a split; raise on bad rows under `fail`, set them aside under `skip`.
    `preference`: preference rows (pairs, KTO rows) are read too (a preference objective's run)."""
    loaded = LoadedSplit([], [], [], [])
    errors: list[Issue] = []
    for spec in specs:
        samples, bad = _read_file(spec, loaded, preference)
        errors += [issue for _, issues in bad for issue in issues if issue.severity == "error"]
        loaded.quarantined += bad
        chosen = _apply_weight(samples, spec.weight, random.Random(f"{seed}:{spec.reference}"))
        loaded.files[-1].used = len(chosen)
        loaded.samples += chosen
    if errors and policy == "fail":
        rows = len(loaded.quarantined)
        raise UserError(
            f"{errors[0]} ({rows} bad {split} row{'s' if rows > 1 else ''}; see them all with "
            f"`tunesmith data check`, or set data.on_bad_row: skip)"
        )
    if not loaded.samples:
        raise UserError(f"{specs[0].reference}: no usable {split} rows")
    return loaded


def _read_file(
    spec: SourceSpec, loaded: LoadedSplit, preference: bool = False
) -> tuple[list[Any], list[tuple[RawRow, list[Issue]]]]:
    """The per-row pipeline of `data check` (FileStream), keeping good rows and setting bad ones aside."""
    stream = FileStream(spec.reference, spec.options, preference=preference)
    samples: list[Any] = []
    bad: list[tuple[RawRow, list[Issue]]] = []
    for raw, sample, issues in stream:
        if sample is None:
            bad.append((raw, issues))
            continue
        if isinstance(sample, (PreferencePair, KtoSample)) and not preference:
            raise AssertionError("FileStream reads preference rows only when asked to")
        loaded.warnings += issues
        samples.append(sample)
    if stream.rows == 0:
        raise UserError(f"{spec.reference}: the file has no rows")
    loaded.files.append(
        FileSummary(
            spec.reference,
            stream.source.kind,
            stream.format or "unknown",
            stream.reason,
            stream.rows,
            0,
            stream.source.fingerprint(),
        )
    )
    return samples, bad


def _apply_weight(samples: list[Any], weight: float, rng: random.Random) -> list[Any]:
    """`weight` copies of the rows: whole repeats, then a seeded sample for the fraction.

    >>> len(_apply_weight(list(range(10)), 2.5, random.Random(0)))
    25
    """
    whole, fraction = divmod(weight, 1.0)
    chosen = samples * int(whole)
    extra = round(fraction * len(samples))
    return chosen + (rng.sample(samples, extra) if extra else [])


def source_specs(data: Any, split: str) -> list[SourceSpec]:
    """The files of one split of a `DataConfig`, each with its own format options."""
    entries = getattr(data, split)
    if entries is None:
        return []
    specs = []
    for entry in [entries] if isinstance(entries, str) else entries:
        path, weight, own = (entry, 1.0, None) if isinstance(entry, str) else (entry.path, entry.weight, entry)
        options = FormatOptions(
            format=(own and own.format) or data.format,
            columns=(own.columns if own and own.columns is not None else data.columns),
            roles=(own.roles if own and own.roles is not None else data.roles),
        )
        specs.append(SourceSpec(path, weight, options))
    return specs
