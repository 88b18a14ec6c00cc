"""Base vs tuned on held-out conversations: generate, score, write, print."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunesmith.data.types import Conversation
from tunesmith.evaluate.generate import generate
from tunesmith.evaluate.loss import split_loss
from tunesmith.evaluate.metrics import resolve_metrics, score
from tunesmith.formatting.encode import Example, generation_prompt
from tunesmith.formatting.template import ChatTemplate


def evaluate_model(
    model: Any,
    tokenizer: Any,
    template: ChatTemplate,
    conversations: list[Conversation],
    *,
    metrics: list[str],
    stop_ids: list[int],
    compare_base: bool,
    max_new_tokens: int | None,
    batch_size: int,
    console: Any,
    regex: str | None = None,
    loss_examples: list[Example] | None = None,
) -> dict:
    """Generate for every conversation's last assistant turn with the tuned model (and the base);
    with `loss_examples` (the split encoded as in training), also the loss and perplexity of each."""
    scorers = resolve_metrics(metrics, regex=regex)  # a bad user metric fails before any generation
    pairs = [generation_prompt(c, template) for c in conversations]
    prompts = [p for p, _ in pairs]
    references = [r for _, r in pairs]
    limit = max_new_tokens or _default_cap(tokenizer, references)
    outputs: dict[str, list[str]] = {}
    losses: dict[str, dict] = {}
    with console.status(f"Generating {len(prompts)} answers with the tuned model"):
        outputs["tuned"] = generate(
            model, tokenizer, prompts, max_new_tokens=limit, stop_ids=stop_ids, batch_size=batch_size
        )
        if loss_examples:
            losses["tuned"] = split_loss(model, loss_examples)
    if compare_base and hasattr(model, "disable_adapter"):
        with console.status(f"Generating {len(prompts)} answers with the base model"), model.disable_adapter():
            outputs["base"] = generate(
                model, tokenizer, prompts, max_new_tokens=limit, stop_ids=stop_ids, batch_size=batch_size
            )
            if loss_examples:
                losses["base"] = split_loss(model, loss_examples)
    return _summarize(conversations, prompts, references, outputs, metrics, scorers, losses)


def _default_cap(tokenizer: Any, references: list[str]) -> int:
    """Longest reference in tokens plus a margin: enough to be right, not enough to ramble long."""
    longest = max(len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in references)
    return longest + 16


def _summarize(
    conversations,
    prompts,
    references,
    outputs: dict[str, list[str]],
    metrics: list[str],
    scorers: dict,
    losses: dict[str, dict],
) -> dict:
    samples = []
    totals = {model: dict.fromkeys(metrics, 0.0) for model in outputs}
    for i, conversation in enumerate(conversations):
        sample: dict[str, Any] = {"source": str(conversation.source), "prompt": prompts[i], "reference": references[i]}
        if conversation.id:
            sample["id"] = conversation.id
        for model, answers in outputs.items():
            scores = score(answers[i], references[i], scorers)
            sample[model] = answers[i]
            sample[f"{model}_scores"] = scores
            for name, value in scores.items():
                totals[model][name] += value
        samples.append(sample)
    n = len(conversations)
    summary: dict[str, dict] = {
        model: {name: round(v / n, 4) for name, v in values.items()} for model, values in totals.items()
    }
    for model, loss in losses.items():
        summary[model].update(loss=loss["loss"], perplexity=loss["perplexity"], loss_tokens=loss["tokens"])
    results: dict[str, Any] = {"n": n, "metrics": metrics, **summary}
    if "base" in summary:
        names = [*metrics, *(["loss", "perplexity"] if losses else [])]
        results["difference"] = {
            name: _difference(summary["tuned"].get(name), summary["base"].get(name)) for name in names
        }
    return results | {"samples": samples}


def _difference(tuned: float | None, base: float | None) -> float | None:
    return None if tuned is None or base is None else round(tuned - base, 6)


def write_results(results: dict, eval_dir: Path) -> None:
    from tunesmith.runfolder import write_json, write_jsonl

    write_json(eval_dir / "results.json", {k: v for k, v in results.items() if k != "samples"})
    write_jsonl(eval_dir / "samples.jsonl", results["samples"])


def results_table(results: dict) -> Any:
    """A rich table: one row per metric, base and tuned side by side with the difference."""
    from rich.table import Table

    table = Table(title=f"Evaluation on {results['n']} held-out rows")
    has_base = "base" in results
    table.add_column("metric")
    if has_base:
        table.add_column("base", justify="right")
    table.add_column("tuned", justify="right")
    if has_base:
        table.add_column("change", justify="right")
    extra = [name for name in ("loss", "perplexity") if results["tuned"].get(name) is not None]
    for name in [*results["metrics"], *extra]:
        tuned = results["tuned"][name]
        row = [name]
        if has_base and results["base"].get(name) is not None:
            base = results["base"][name]
            row += [f"{base:.3f}", f"{tuned:.3f}", f"{tuned - base:+.3f}"]
        elif has_base:
            row += ["", f"{tuned:.3f}", ""]
        else:
            row.append(f"{tuned:.3f}")
        table.add_row(*row)
    return table
