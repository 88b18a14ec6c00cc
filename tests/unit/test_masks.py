"""Loss masks from one render: trained tokens are exactly the assistant answers plus end-of-turn."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from tunesmith.data.types import IGNORE_INDEX, Conversation, Message, Provenance
from tunesmith.errors import UserError
from tunesmith.formatting.encode import build_template, encode, end_of_turn_markers
from tunesmith.formatting.template import ChatTemplate

FIXTURES = Path(__file__).parents[1] / "fixtures" / "chat_templates"


def conversation(*turns: tuple[str, str], weights: dict[int, float] | None = None) -> Conversation:
    weights = weights or {}
    messages = tuple(Message(role, text, weights.get(i)) for i, (role, text) in enumerate(turns))
    return Conversation(messages, Provenance("mem.jsonl", 1))


MULTI_TURN = conversation(
    ("system", "Be terse."),
    ("user", "Hi there"),
    ("assistant", "Hello! How can I help?"),
    ("user", "Say 'ok' twice"),
    ("assistant", "ok ok"),
)


@pytest.fixture(scope="module", params=["phi-3-mini-128k-instruct", "granite-3.1-1b-a400m-instruct"])
def tokenizer(request):
    return AutoTokenizer.from_pretrained(FIXTURES / request.param)


def trained_text(tokenizer, example) -> str:
    return tokenizer.decode([t for t, label in zip(example.input_ids, example.labels) if label != IGNORE_INDEX])


def test_assistant_turns_and_their_end_of_turn_train_nothing_else(tokenizer):
    template = build_template(tokenizer, "model")
    markers = end_of_turn_markers(tokenizer)
    examples = encode(MULTI_TURN, template, tokenizer, train_on="assistant", max_length=4096, markers=markers)
    eot = "<|end|>" if "<|end|>" in markers else "<|end_of_text|>"
    assert "".join(trained_text(tokenizer, e) for e in examples).replace(" ", "") == f"Hello!HowcanIhelp?{eot}okok{eot}"
    assert all(e.eot_trained for e in examples)
    # the last example is the whole conversation as the tokenizer's own apply_chat_template tokenizes it
    hf = tokenizer.apply_chat_template(MULTI_TURN.as_dicts(), tokenize=True, return_dict=True)["input_ids"]
    ids = examples[-1].input_ids
    assert hf[: len(ids)] == ids and len(hf) - len(ids) <= 2  # what follows the last stop is left out


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
    examples = encode(
        MULTI_TURN, template, tokenizer, train_on="assistant", max_length=12, markers=end_of_turn_markers(tokenizer)
    )
    assert all(e.truncated and len(e.input_ids) == 12 for e in examples)
    assert sum(e.truncated_turns for e in examples) == 2  # both answers lie past token 12: each is cut wholly


def test_template_that_drops_assistant_text_is_refused():
    from tunesmith.formatting.prepare import encode_split

    tokenizer = AutoTokenizer.from_pretrained(FIXTURES / "phi-3-mini-128k-instruct")
    broken = ChatTemplate(
        "{% for m in messages %}{% if m.role != 'assistant' %}{{ m.content }}{% endif %}{% endfor %}",
        name="broken.jinja",
    )
    with pytest.raises(
        UserError,
        match=r"^mem.jsonl:1: chat template broken.jinja leaves out or rewrites the answer "
        r"of assistant messages\[2\]",
    ):
        encode_split(
            [MULTI_TURN],
            broken,
            tokenizer,
            train_on="assistant",
            max_length=512,
            markers=end_of_turn_markers(tokenizer),
            split="train",
        )


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
