"""Turn a split's conversations into training examples, and audit them before any compute.

The audit is what stops the classic silent failures: rows that train nothing, assistant turns
whose end-of-turn token is not trained (the model never learns to stop), rows cut by max_length.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tunesmith.data.types import Conversation, Sample
from tunesmith.errors import UserError
from tunesmith.formatting.encode import Example, encode_sample
from tunesmith.formatting.template import ChatTemplate


@dataclass(frozen=True)
class SplitReport:
    rows: int
    tokens: int
    trainable_tokens: int
    truncated: int
    missing_end_of_turn: int

    @property
    def trainable_share(self) -> float:
        return self.trainable_tokens / max(self.tokens, 1)


def encode_split(samples: list[Sample], template: ChatTemplate, tokenizer: Any, *, train_on: str,
                 max_length: int, markers: tuple[str, ...], split: str) -> tuple[list[Example], SplitReport]:
    """Encode every conversation; rows that would train nothing are an error naming the first."""
    examples = [encode_sample(s, template, tokenizer, train_on=train_on, max_length=max_length, markers=markers)
                for s in samples]
    empty = [e for e in examples if e.n_trainable == 0]
    if empty:
        raise UserError(f"{empty[0].source_id}: {len(empty)} of {len(examples)} {split} rows train no token "
                        f"with {template.name} and train_on={train_on} (is the assistant text rendered?)")
    report = SplitReport(
        rows=len(examples),
        tokens=sum(len(e.input_ids) for e in examples),
        trainable_tokens=sum(e.n_trainable for e in examples),
        truncated=sum(e.truncated for e in examples),
        missing_end_of_turn=sum(not e.eot_trained for e in examples),
    )
    return examples, report


def shared_system_prompt(samples: list[Sample]) -> str | None:
    """The system prompt every conversation starts with, if they all share one.

    Chat and export use it as the default, so inference sees what training saw.
    """
    conversations = [s for s in samples if isinstance(s, Conversation)]
    if not conversations or len(conversations) != len(samples):
        return None
    prompts = {c.messages[0].content if c.messages[0].role == "system" else None for c in conversations}
    return prompts.pop() if len(prompts) == 1 else None


def warnings_for(report: SplitReport, split: str) -> list[str]:
    notes = []
    if report.truncated:
        notes.append(f"{report.truncated} {split} rows are longer than max_length and were cut")
    if report.missing_end_of_turn:
        notes.append(f"{report.missing_end_of_turn} {split} rows have an assistant turn whose end-of-turn token "
                     "is not trained; the model may not learn to stop")
    return notes
