"""Evaluate a run and record it: used right after training and by `tunesmith eval RUN_DIR`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tunesmith.config.schema import EvalConfig
from tunesmith.data.load import SourceSpec, load_split, source_specs
from tunesmith.data.options import FormatOptions
from tunesmith.data.types import Conversation
from tunesmith.errors import UserError
from tunesmith.evaluate.evaluation import evaluate_model, results_table, write_results
from tunesmith.evaluate.generate import stop_token_ids
from tunesmith.evaluate.runs import load_run
from tunesmith.formatting.template import ChatTemplate
from tunesmith.runfolder import RunFolder, read_record


def evaluate_and_record(
    model: Any,
    tokenizer: Any,
    template: ChatTemplate,
    rows: list[Conversation],
    *,
    settings: EvalConfig,
    end_of_turn: Sequence[str],
    run_dir: Path,
    console: Any,
    compare_base: bool | None = None,
    limit: int | None = None,
    train_on: str | None = None,
    max_length: int | None = None,
) -> dict:
    """Score base and tuned, write eval/results.json and eval/samples.jsonl, print the table.

    Generation covers the first `limit` rows; loss and perplexity cover every row, encoded as
    training encodes them (`train_on`/`max_length`: given, else from the run's config.yaml)."""
    limit = limit or settings.limit
    train_on, max_length = _encoding_settings(run_dir, train_on, max_length)
    loss_examples = _loss_examples(rows, template, tokenizer, train_on, max_length, end_of_turn, console)
    results = evaluate_model(
        model,
        tokenizer,
        template,
        rows[:limit] if limit else rows,
        metrics=settings.metrics,
        stop_ids=stop_token_ids(tokenizer, end_of_turn),
        compare_base=settings.compare_base if compare_base is None else compare_base,
        max_new_tokens=settings.max_new_tokens,
        batch_size=settings.batch_size,
        console=console,
        regex=settings.regex,
        loss_examples=loss_examples,
    )
    write_results(results, RunFolder(run_dir).eval)
    console.print(results_table(results))
    return results


def _encoding_settings(run_dir: Path, train_on: str | None, max_length: int | None) -> tuple[str, int]:
    if train_on is None or max_length is None:
        from tunesmith.config.schema import TemplateConfig

        saved = RunFolder(run_dir).config
        if saved.is_file():
            from tunesmith.config import load_config

            section = load_config(saved).template
        else:
            section = TemplateConfig()
        train_on = train_on or section.train_on
        max_length = max_length or section.max_length
    return train_on, max_length


def _loss_examples(
    rows: list[Conversation],
    template: ChatTemplate,
    tokenizer: Any,
    train_on: str,
    max_length: int,
    end_of_turn: Sequence[str],
    console: Any,
) -> list[Any]:
    """The rows encoded as in training; a split that cannot be (no trained token) skips the loss, said once."""
    from tunesmith.evaluate.loss import encode_for_loss

    try:
        return encode_for_loss(rows, template, tokenizer, train_on=train_on, max_length=max_length, markers=end_of_turn)
    except UserError as err:
        console.print(f"[yellow]warning:[/] no loss/perplexity: {err}", soft_wrap=True)
        return []


def held_out_conversations(config: Any, data: str | None) -> list[Conversation]:
    """The conversations to evaluate on: `data` if given, else the run's test split."""
    specs = source_specs(config.data, "test")
    if data is not None:
        specs = [SourceSpec(data, 1.0, FormatOptions(config.data.format, config.data.columns, config.data.roles))]
    if not specs:
        raise UserError("the run has no data.test; pass --data FILE")
    conversations = load_split(specs, split="test", policy="fail", seed=config.train.seed).conversations()
    if not conversations:
        raise UserError(f"{specs[0].reference}: no chat rows to generate answers for")
    return conversations


def evaluate_run(
    run_dir: str | Path,
    *,
    console: Any,
    data: str | None = None,
    limit: int | None = None,
    compare_base: bool | None = None,
) -> dict:
    """Load a finished run and evaluate it on its test split (or `data`)."""
    read_record(Path(run_dir))  # fail fast, before loading weights
    run = load_run(run_dir)
    rows = held_out_conversations(run.config, data)
    results = evaluate_and_record(
        run.model,
        run.tokenizer,
        run.template,
        rows,
        settings=run.config.eval,
        end_of_turn=run.record.end_of_turn,
        run_dir=run.run_dir,
        console=console,
        compare_base=compare_base,
        limit=limit,
    )
    from tunesmith.report import write_report
    from tunesmith.runfolder import MANIFEST, reseal_manifest

    console.print(f"Report: {write_report(run.run_dir)}", soft_wrap=True)  # the page shows the new numbers
    if (run.run_dir / MANIFEST).is_file():  # eval/ and report.html changed: hashes taken again
        reseal_manifest(run.run_dir)
    return results
