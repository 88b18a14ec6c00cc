"""`tunesmith eval RUN_DIR`: base vs tuned on the run's test split (or another file)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunesmith.data.formats import load_conversations
from tunesmith.errors import UserError
from tunesmith.evaluate.evaluation import evaluate_model, results_table, write_results
from tunesmith.evaluate.generate import stop_token_ids
from tunesmith.evaluate.runs import load_run, read_run_meta


def evaluate_run(run_dir: str | Path, *, console: Any, data: str | None = None, limit: int | None = None,
                 compare_base: bool | None = None) -> dict:
    """Evaluate a finished run and write eval/results.json and eval/samples.jsonl."""
    read_run_meta(Path(run_dir))  # fail fast, before loading weights
    run = load_run(run_dir)
    settings = run.config.eval
    reference = data or run.config.data.test
    if not reference:
        raise UserError(f"{run_dir}: the run has no data.test; pass --data FILE")
    rows = load_conversations(reference)
    rows = rows[: limit or settings.limit] if (limit or settings.limit) else rows
    results = evaluate_model(run.model, run.tokenizer, run.template, rows, metrics=settings.metrics,
                             stop_ids=stop_token_ids(run.tokenizer, run.meta["end_of_turn"]),
                             compare_base=settings.compare_base if compare_base is None else compare_base,
                             max_new_tokens=settings.max_new_tokens, batch_size=settings.batch_size,
                             console=console)
    write_results(results, run.run_dir / "eval")
    console.print(results_table(results))
    return results
