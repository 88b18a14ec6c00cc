"""Loss masks from one render: trained tokens are exactly the assistant answers plus end-of-turn."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from tunesmith.data.types import Conversation, Message, Provenance
from tunesmith.errors import UserError
from tunesmith.formatting.encode import IGNORE_INDEX, build_template, encode, end_of_turn_markers
from tunesmith.formatting.template import ChatTemplate

FIXTURES = Path(__file__).parents[1] / "fixtures" / "chat_templates"


def conversation(*turns: tuple[str, str], weights: dict[int, float] | None = None) -> Conversation:
    weights = weights or {}
    messages = tuple(Message(role, text, weights.get(i)) for i, (role, text) in enumerate(turns))
    return Conversation(messages, Provenance("mem.jsonl", 1))


MULTI_TURN = conversation(("system", "Be terse."), ("user", "Hi there"), ("assistant", "Hello! How can I help?"),
                          ("user", "Say 'ok' twice"), ("assistant", "ok ok"))


@pytest.fixture(scope="module", params=["phi-3-mini-128k-instruct", "granite-3.1-1b-a400m-instruct"])
def tokenizer(request):
    return AutoTokenizer.from_pretrained(FIXTURES / request.param)


def trained_text(tokenizer, example) -> str:
    return tokenizer.decode([t for t, l in zip(example.input_ids, example.labels) if l != IGNORE_INDEX])


def test_assistant_turns_and_their_end_of_turn_train_nothing_else(tokenizer):
    template = build_template(tokenizer, "model")
    markers = end_of_turn_markers(tokenizer)
    [example] = encode(MULTI_TURN, template, tokenizer, train_on="assistant", max_length=4096, markers=markers)
    eot = "<|end|>" if "<|end|>" in markers else "<|end_of_text|>"
    assert trained_text(tokenizer, example).replace(" ", "") == f"Hello!HowcanIhelp?{eot}okok{eot}"
    assert example.eot_trained
    # the same ids as the tokenizer's own apply_chat_template: one render, nothing tokenized apart
    assert example.input_ids == tokenizer.apply_chat_template(MULTI_TURN.as_dicts(), tokenize=True,
                                                              return_dict=True)["input_ids"]


def test_last_and_weights(tokenizer):
    template = build_template(tokenizer, "model")
    markers = end_of_turn_markers(tokenizer)
    [last] = encode(MULTI_TURN, template, tokenizer, train_on="last", max_length=4096, markers=markers)
    assert "Hello" not in trained_text(tokenizer, last) and "ok" in trained_text(tokenizer, last)
    weighted = conversation(*[(m.role, m.content) for m in MULTI_TURN.messages], weights={4: 0.0})
    [only_first] = encode(weighted, template, tokenizer, train_on="assistant", max_length=4096, markers=markers)
    assert "Hello" in trained_text(tokenizer, only_first) and "ok ok" not in trained_text(tokenizer, only_first)


def test_truncation_is_reported(tokenizer):
    template = build_template(tokenizer, "model")
    [example] = encode(MULTI_TURN, template, tokenizer, train_on="assistant", max_length=12,
                     markers=end_of_turn_markers(tokenizer))
    assert example.truncated and len(example.input_ids) == 12
    assert example.truncated_turns == 2  # both answers lie past token 12: each is cut wholly


def test_template_that_drops_assistant_text_trains_nothing():
    from tunesmith.formatting.prepare import encode_split

    tokenizer = AutoTokenizer.from_pretrained(FIXTURES / "phi-3-mini-128k-instruct")
    broken = ChatTemplate("{% for m in messages %}{% if m.role != 'assistant' %}{{ m.content }}{% endif %}{% endfor %}",
                          name="broken.jinja")
    with pytest.raises(UserError, match=r"mem.jsonl:1: 1 of 1 train rows train no token with broken.jinja"):
        encode_split([MULTI_TURN], broken, tokenizer, train_on="assistant", max_length=512,
                     markers=end_of_turn_markers(tokenizer), split="train")


def test_template_errors_name_the_template():
    with pytest.raises(UserError, match=r"chat template bad.jinja:1: invalid Jinja"):
        ChatTemplate("{% for m in messages %}", name="bad.jinja")
    refusing = ChatTemplate("{{ raise_exception('roles must alternate') }}", name="strict.jinja")
    with pytest.raises(UserError, match="roles must alternate"):
        refusing.render([{"role": "user", "content": "x"}])


def test_sandbox_blocks_attribute_escape():
    sneaky = ChatTemplate("{{ messages.__class__.__mro__ }}", name="sneaky.jinja")
    with pytest.raises(UserError):
        sneaky.render([{"role": "user", "content": "x"}])


def test_labels_by_bisection_equal_the_token_by_token_sweep():
    """`_labels` finds each range's tokens by bisection; on any left-to-right offsets (zero-width
    tokens, tokens straddling range edges, added markers) it must equal the plain sweep."""
    import random

    from tunesmith.formatting.encode import _labels, _labels_by_sweep

    rng = random.Random(7)
    for _ in range(2000):
        offsets, position = [], 0
        for _ in range(rng.randint(0, 30)):
            width = rng.choice((0, 1, 1, 2, 3, 5))
            offsets.append((position, position + width))
            position += width
        ids = [rng.randint(0, 9) for _ in offsets]
        cuts = sorted(rng.sample(range(position + 2), min(position + 2, 2 * rng.randint(0, 3))))
        ranges = [(cuts[i], cuts[i + 1]) for i in range(0, len(cuts) - 1, 2) if cuts[i] < cuts[i + 1]]
        added = frozenset(rng.sample(range(10), 3))
        assert _labels(ids, offsets, ranges, added) == _labels_by_sweep(ids, offsets, ranges, added), (offsets, ranges)
    backwards = [(0, 2), (5, 7), (2, 5)]  # offsets that go back: the sweep itself answers
    assert _labels([1, 2, 3], backwards, [(2, 5)]) == _labels_by_sweep([1, 2, 3], backwards, [(2, 5)], frozenset())
