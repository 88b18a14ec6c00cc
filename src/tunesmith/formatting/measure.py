"""What `data check --model` measures a sample with: the training encoder, truncation off.

The check counts how many tokens `max_length` would cut, so it needs the full length. A sample
gives a list of Examples (one per trained turn where the template rewrites history); the check
sums their tokens and trained tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from tunesmith.formatting.encode import Example, build_template, encode_sample, end_of_turn_markers


def measure_for(tokenizer: Any, *, train_on: str, template: str = "model") -> Callable[[Any], list[Example]]:
    """Sample -> its Examples, with the model's tokenizer (`models.load.load_tokenizer`) and its own
    template (or a built-in one, or a `.jinja` file)."""
    chat_template = build_template(tokenizer, template)
    return partial(
        encode_sample,
        template=chat_template,
        tokenizer=tokenizer,
        train_on=train_on,
        max_length=10**9,
        markers=end_of_turn_markers(tokenizer, chat_template),
    )
