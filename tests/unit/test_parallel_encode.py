"""A large split is encoded in forked workers: the same Examples, in the same order, and the same
error naming the first refused row, as encoding it in this process."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from tunesmith.data.types import Conversation, Message, Provenance
from tunesmith.errors import UserError
from tunesmith.formatting import prepare
from tunesmith.formatting.encode import build_template, end_of_turn_markers
from tunesmith.formatting.template import ChatTemplate

FIXTURES = Path(__file__).parents[1] / "fixtures" / "chat_templates"
pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="workers are forked on Linux only")


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(FIXTURES / "phi-3-mini-128k-instruct")


def samples(count: int) -> list[Conversation]:
    return [
        Conversation(
            (
                Message("user", f"What is {i} times {i % 7}?"),
                Message("assistant", f"{i * (i % 7)}" + " and more" * (i % 5)),
            ),
            Provenance("mem.jsonl", i + 1),
        )
        for i in range(count)
    ]


def options(tokenizer) -> dict:
    return {"train_on": "assistant", "max_length": 24, "markers": end_of_turn_markers(tokenizer)}


def test_workers_give_the_examples_of_one_process_in_order(tokenizer, monkeypatch):
    monkeypatch.setattr(prepare, "PARALLEL_ROWS", 50)
    template = build_template(tokenizer, "model")
    rows = samples(203)
    alone = prepare.encode_rows(rows, template, tokenizer, options(tokenizer), workers=1)
    forked = prepare.encode_rows(rows, template, tokenizer, options(tokenizer), workers=2)
    assert forked == alone
    assert [row[0].source_id for row in forked] == [f"mem.jsonl:{i + 1}" for i in range(203)]
    assert any(e.truncated for row in forked for e in row)  # max_length reached the workers


def test_a_refused_row_in_a_worker_is_the_same_one_line_error(tokenizer, monkeypatch):
    monkeypatch.setattr(prepare, "PARALLEL_ROWS", 50)
    template = ChatTemplate(
        "{% for m in messages %}{% if m.content == 'bad' %}{{ raise_exception('no bad rows') }}"
        "{% endif %}<|{{ m.role }}|>{{ m.content }}<|end|>{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}",
        name="strict.jinja",
    )
    rows = samples(120)
    for i in (77, 101):  # the first refused row is the one named, wherever the pieces finish
        rows[i] = Conversation((Message("user", "bad"), Message("assistant", "x")), Provenance("mem.jsonl", i + 1))
    for workers in (1, 2):
        with pytest.raises(UserError, match=r"^mem\.jsonl:78: .*no bad rows"):
            prepare.encode_rows(rows, template, tokenizer, options(tokenizer), workers=workers)
