"""Everything a run checks before its folder exists: data, model reference, template, masks.

Order matters. Bad data must stop the run before any model is fetched or loaded, so rows are
validated first; but an unchanged dataset with an unchanged tokenizer and template should cost
nothing, so when the model is already on disk the processed-data cache is consulted first.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from tunesmith.bulk import paused_gc
from tunesmith.config import Config
from tunesmith.data.load import LoadedSplit, load_split, source_specs
from tunesmith.data.sources import open_source
from tunesmith.data.types import Conversation
from tunesmith.errors import UserError
from tunesmith.formatting import cache
from tunesmith.formatting.encode import build_template, end_of_turn_markers
from tunesmith.formatting.pairs import encode_preference_split
from tunesmith.formatting.prepare import SplitReport, encode_split, shared_system_prompt, warnings_for
from tunesmith.training.defaults import Schedule, choose

TRAINING_SPLITS = ("train", "validation")


@dataclass
class SplitData:
    """A training split ready to train on, from the cache or freshly processed."""

    examples: list[Any]
    """Supervised Examples, or a preference run's Scored rows (formatting/pairs.py)."""
    report: SplitReport
    summary: dict[str, Any]  # files, warnings, quarantined rows (as records), system prompt
    cached: bool


@dataclass
class Prepared:
    config: Config
    ref: Any
    tokenizer: Any
    template: Any
    markers: tuple[str, ...]
    splits: dict[str, SplitData]
    test: list[Conversation]
    schedule: Schedule | None = None
    """What the run will do, and the settings chosen from the data (training/defaults.py)."""

    @property
    def system_prompt(self) -> str | None:
        return self.splits["train"].summary["system_prompt"]


def prepare(config: Config, console: Any, *, print_warnings: bool = True) -> Prepared:
    """Check and process the data; no weights are loaded. `print_warnings=False` leaves the audit's
    warnings to the caller (`inspect` prints them under its audit table)."""
    with paused_gc():  # builds 100k-example lists: see tunesmith/bulk.py
        return _prepare(config, console, print_warnings=print_warnings)


def _prepare(config: Config, console: Any, *, print_warnings: bool) -> Prepared:
    ref = _resolve(config, console, fetch=False)
    keys: dict[str, str] = {}
    done: dict[str, SplitData] = {}
    preference = config.train.objective != "sft"  # preference splits are encoded each run (not cached)
    if ref is not None:
        tokenizer, template, markers = _formatting(config, ref)
        keys = {split: _key(config, split, tokenizer, template, markers) for split in _splits(config)}
        done = {split: hit for split, key in keys.items() if not preference and (hit := _from_cache(key)) is not None}
    loaded = {split: _load_split(config, split, console) for split in _splits(config) if split not in done}
    test = _test_conversations(config, console)
    if ref is None:
        ref = _resolve(config, console, fetch=True)
        tokenizer, template, markers = _formatting(config, ref)
        keys = {split: _key(config, split, tokenizer, template, markers) for split in _splits(config)}
    for split, data in loaded.items():
        done[split] = _process(config, split, data, tokenizer, template, markers, console)
        if preference:
            continue
        cache.store(
            keys[split], done[split].examples, {"report": asdict(done[split].report), "summary": done[split].summary}
        )
    for split, ready in done.items():
        if ready.cached:
            console.print(f"{split}: {ready.report.rows} rows from the processed-data cache")
        for note in warnings_for(ready.report, split) if print_warnings else ():
            console.print(f"[yellow]warning:[/] {note}", soft_wrap=True)
    config, schedule = _schedule(config, done, console, print_warnings=print_warnings)
    return Prepared(config, ref, tokenizer, template, markers, done, test, schedule)


def _schedule(
    config: Config, done: dict[str, SplitData], console: Any, *, print_warnings: bool
) -> tuple[Config, Schedule | None]:
    """The training settings the config leaves unset, chosen from the train split (training/defaults.py)."""
    if "train" not in done:
        return config, None
    examples = done["train"].examples
    lengths = [len(e.input_ids) if hasattr(e, "input_ids") else 1 for e in examples]
    config, schedule = choose(config, lengths)
    if schedule.chosen:
        console.print("Chosen from the data (not set in the config):", soft_wrap=True)
        for line in schedule.lines():
            console.print(f"  {line}", soft_wrap=True, markup=False)
    if schedule.warning and print_warnings:
        console.print(f"[yellow]warning:[/] {schedule.warning}", soft_wrap=True)
    return config, schedule


def _splits(config: Config) -> list[str]:
    return [split for split in TRAINING_SPLITS if getattr(config.data, split)]


def _resolve(config: Config, console: Any, *, fetch: bool) -> Any:
    from tunesmith.models.load import resolve_model

    try:
        return resolve_model(config.model.name, revision=config.model.revision, log=console.print, fetch=fetch)
    except UserError as err:
        raise UserError(f"{config.origin('model.name')}: model.name: {err}") from None


def _formatting(config: Config, ref: Any) -> tuple[Any, Any, tuple[str, ...]]:
    from tunesmith.models.load import load_tokenizer

    tokenizer = load_tokenizer(ref)
    try:
        template = build_template(
            tokenizer,
            config.template.chat_template,
            variables=config.template.variables,
            drop=tuple(config.template.drop),
        )
    except UserError as err:
        raise UserError(f"{config.origin('template.chat_template')}: template.chat_template: {err}") from None
    return tokenizer, template, end_of_turn_markers(tokenizer, template)


def _key(config: Config, split: str, tokenizer: Any, template: Any, markers: tuple[str, ...]) -> str:
    specs = source_specs(config.data, split)
    # the reference too: the cached summary names each file and each quarantined row's file as read
    files = [
        (
            s.reference,
            _fingerprint(config, split, s.reference),
            s.weight,
            s.options.format,
            dict(s.options.columns),
            dict(s.options.roles),
        )
        for s in specs
    ]
    return cache.cache_key(
        split=split,
        files=files,
        policy=config.data.on_bad_row,
        seed=config.train.seed,
        template=template.source,
        special_tokens=template.special_tokens,
        drop=sorted(template.drop),
        tokenizer=cache.tokenizer_digest(tokenizer),
        train_on=config.template.train_on,
        max_length=config.template.max_length,
        markers=markers,
    )


def _fingerprint(config: Config, split: str, reference: str) -> str:
    try:
        return open_source(reference).fingerprint()
    except UserError as err:
        raise UserError(f"{config.origin(f'data.{split}')}: data.{split}: {err}") from None


def _from_cache(key: str) -> SplitData | None:
    hit = cache.load(key)
    if hit is None:
        return None
    return SplitData(hit.examples, SplitReport(**hit.meta["report"]), hit.meta["summary"], cached=True)


def _load_split(config: Config, split: str, console: Any) -> LoadedSplit:
    """A split's samples under the bad-row policy; a missing file is reported where the config named it."""
    try:
        loaded = load_split(
            source_specs(config.data, split),
            split=split,
            policy=config.data.on_bad_row,
            seed=config.train.seed,
            preference=config.train.objective != "sft" and split != "test",
        )
    except UserError as err:
        if str(err).startswith(("data file not found", "bundled data not found")):
            raise UserError(f"{config.origin(f'data.{split}')}: data.{split}: {err}") from None
        raise
    for f in loaded.files:
        console.print(f"{split}: {f.reference}: {f.format} ({f.reason}), {f.rows} rows, {f.used} used")
    if loaded.quarantined:
        console.print(
            f"[yellow]warning:[/] {len(loaded.quarantined)} bad {split} rows skipped "
            f"(data.on_bad_row: skip); they are listed in quarantine.jsonl"
        )
    return loaded


def _test_conversations(config: Config, console: Any) -> list[Conversation]:
    if not config.data.test:
        return []
    return _load_split(config, "test", console).conversations()


def _process(
    config: Config,
    split: str,
    loaded: LoadedSplit,
    tokenizer: Any,
    template: Any,
    markers: tuple[str, ...],
    console: Any,
) -> SplitData:
    skipped: list[dict] = []
    common: dict[str, Any] = {
        "max_length": config.template.max_length,
        "markers": markers,
        "split": split,
        "on_bad_row": config.data.on_bad_row,
        "skipped": skipped,
    }
    examples: list[Any]
    if config.train.objective != "sft":  # preference rows: formatting/pairs.py
        objective, seed = config.train.objective, config.train.seed
        examples, report = encode_preference_split(
            loaded.samples, template, tokenizer, objective=objective, seed=seed, **common
        )
    else:
        train_on = config.template.train_on
        examples, report = encode_split(loaded.samples, template, tokenizer, train_on=train_on, **common)
    if skipped:
        console.print(
            f"[yellow]warning:[/] {len(skipped)} {split} rows too long to train skipped "
            f"(data.on_bad_row: skip), e.g. {skipped[0]['file']}:{skipped[0]['line']}: "
            f"{skipped[0]['issues'][0]['message']}; they are listed in quarantine.jsonl",
            soft_wrap=True,
        )
    summary = {
        "files": [asdict(f) for f in loaded.files],
        "warnings": [w.as_dict() for w in loaded.warnings],
        "quarantined": [
            {"file": raw.where.file, "line": raw.where.line, "issues": [i.as_dict() for i in issues], "row": raw.data}
            for raw, issues in loaded.quarantined
        ]
        + skipped,
        "system_prompt": shared_system_prompt(loaded.samples),
    }
    return SplitData(examples, report, summary, cached=False)
