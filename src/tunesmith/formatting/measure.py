"""What `data check --model` measures a sample with: the training encoder, truncation off.

The check counts how many tokens `max_length` would cut, so it needs the full length. A sample
gives a list of Examples (one per trained turn where the template rewrites history; a preference
pair its chosen and rejected answers, each after the prompt); the check sums their tokens and
trained tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from tunesmith.data.preference import KtoSample, PreferencePair
from tunesmith.formatting.encode import Example, build_template, encode_sample, end_of_turn_markers
from tunesmith.formatting.pairs import encode_preference
from tunesmith.formatting.template import ChatTemplate

UNCUT = 10**9


def measure_for(tokenizer: Any, *, train_on: str, template: str = "model") -> Callable[[Any], list[Example]]:
    """Sample -> its Examples, with the model's tokenizer (`models.load.load_tokenizer`) and its own
    template (or a built-in one, or a `.jinja` file)."""
    chat_template = build_template(tokenizer, template)
    markers = end_of_turn_markers(tokenizer, chat_template)
    return partial(measure_sample, template=chat_template, tokenizer=tokenizer, train_on=train_on, markers=markers)


def measure_sample(
    sample: Any, *, template: ChatTemplate, tokenizer: Any, train_on: str, markers: tuple[str, ...]
) -> list[Example]:
    """A chat row as `train_on` trains it; a preference row as a preference run encodes it (each answer
    after the prompt, through its stop token, whatever `train_on` says)."""
    if isinstance(sample, (PreferencePair, KtoSample)):
        objective = "kto" if isinstance(sample, KtoSample) else "dpo"
        rows = encode_preference(sample, template, tokenizer, objective=objective, max_length=UNCUT, markers=markers)
        return [example for row in rows for example in row.sequences]
    return encode_sample(sample, template, tokenizer, train_on=train_on, max_length=UNCUT, markers=markers)
