"""Masks on every real chat template in tests/fixtures/chat_templates.

For each, a multi-turn conversation must train exactly each assistant turn's text plus the
end-of-turn marker the template writes after it, and nothing else; the ids must be those
transformers' `apply_chat_template` gives. Folders without tokenizer.json pair their template with
the embedded SmolLM2 tokenizer, given the special tokens the folder's tokenizer_config.json lists.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from tunesmith.data.types import IGNORE_INDEX, Conversation, Message, Provenance, ToolCall
from tunesmith.errors import UserError
from tunesmith.formatting.encode import encode, end_of_turn_markers
from tunesmith.formatting.prepare import encode_split

FIXTURES = Path(__file__).parents[1] / "fixtures" / "chat_templates"
ALL = sorted(p.name for p in FIXTURES.iterdir() if p.is_dir())
EOT = {
    "phi-3-mini-128k-instruct": "<|end|>",
    "granite-3.1-1b-a400m-instruct": "<|end_of_text|>",
    "llama-3.2-3b-instruct": "<|eot_id|>",
    "qwen2.5-instruct": "<|im_end|>",
    "smollm3-3b": "<|im_end|>",
    "deepseek-r1-distill-qwen-32b": "<｜end▁of▁sentence｜>",
    "gemma-1-2b-it": "<end_of_turn>",
    "trl-cohere": "<|END_OF_TURN_TOKEN|>",
    "trl-lfm2": "<|im_end|>",
    "trl-llama3": "<|eot_id|>",
    "trl-nemotron_3_super": "<|im_end|>",
    "trl-qwen3_5_nothink": "<|im_end|>",
    "trl-qwen3_vl": "<|im_end|>",
}
NO_SYSTEM_ROLE = {"gemma-1-2b-it"}


def test_every_fixture_is_covered():
    assert set(ALL) == set(EOT)


@pytest.fixture(scope="module")
def load(template_loader):
    return template_loader  # tests/conftest.py


def conversation(*turns: tuple[str, str], tools: tuple[dict, ...] = ()) -> Conversation:
    return Conversation(tuple(Message(role, text) for role, text in turns), Provenance("mem.jsonl", 1), tools=tools)


def multi_turn(name: str) -> Conversation:
    turns = [
        ("user", "Hi there"),
        ("assistant", "Hello! How can I help?"),
        ("user", "Say 'ok' twice"),
        ("assistant", "ok ok"),
    ]
    return conversation(*([] if name in NO_SYSTEM_ROLE else [("system", "Be terse.")]), *turns)


def trained_runs(tokenizer, example) -> list[str]:
    """The trained tokens, decoded run by run (a run: consecutive trained tokens)."""
    runs, current = [], []
    for token, label in zip(example.input_ids, example.labels):
        if label != IGNORE_INDEX:
            current.append(token)
        elif current:
            runs, current = [*runs, current], []
    runs += [current] if current else []
    return [tokenizer.decode(run) for run in runs]


def hf_ids(tokenizer, messages: list[dict], **kwargs) -> list[int]:
    return tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **kwargs)["input_ids"]


def same_as_transformers(ids: list[int], hf: list[int]) -> bool:
    """transformers' ids through the last stop token (what follows it, a newline, is left out)."""
    return hf[: len(ids)] == ids and len(hf) - len(ids) <= 2


@pytest.mark.parametrize("name", ALL)
def test_multi_turn_trains_each_answer_and_its_end_of_turn_only(name, load):
    tokenizer, template, markers = load(name)
    chat = multi_turn(name)
    try:
        examples = encode(chat, template, tokenizer, train_on="assistant", max_length=4096, markers=markers)
    except UserError as err:  # Nemotron opens <think> at inference; its render of a plain answer does not
        assert name == "trl-nemotron_3_super" and "generation prompt" in str(err)
        return
    eot = EOT[name]
    runs = [run for example in examples for run in trained_runs(tokenizer, example)]
    assert runs == [f"Hello! How can I help?{eot}", f"ok ok{eot}"]
    assert all(e.eot_trained and not e.double_bos and e.truncated_turns == 0 for e in examples)
    if len(examples) == 1:  # one render, tokenized as transformers does
        assert same_as_transformers(examples[0].input_ids, hf_ids(tokenizer, chat.as_dicts()))


def test_llama_adds_bos_once_and_a_date_preamble_that_does_not_train(load):
    tokenizer, template, markers = load("llama-3.2-3b-instruct")
    example = encode(
        multi_turn("llama-3.2-3b-instruct"), template, tokenizer, train_on="assistant", max_length=4096, markers=markers
    )[-1]
    assert example.input_ids[0] == tokenizer.bos_token_id and example.input_ids[1] != tokenizer.bos_token_id
    assert "Cutting Knowledge Date" in tokenizer.decode(example.input_ids)
    assert "Cutting" not in "".join(trained_runs(tokenizer, example))


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def tool_conversation(content: str) -> Conversation:
    call = ToolCall("get_weather", json.dumps({"city": "Paris"}), "call-1")
    messages = (
        Message("user", "Weather in Paris?"),
        Message("assistant", content, tool_calls=(call,)),
        Message("tool", '{"temp": 21}', name="get_weather", tool_call_id="call-1"),
        Message("assistant", "It is 21 degrees in Paris."),
    )
    return Conversation(messages, Provenance("mem.jsonl", 2), tools=(WEATHER_TOOL,))


@pytest.mark.parametrize("content", ["", "Let me check."])
def test_qwen_tool_calls_train_as_generated_text_and_the_default_system_prompt_does_not(content, load):
    """A tool-call turn generates the call: the `<tool_call>` block the template writes after the
    content trains with the end-of-turn; the default system prompt and the tool schemas do not."""
    tokenizer, template, markers = load("qwen2.5-instruct")
    chat = tool_conversation(content)
    [example] = encode(chat, template, tokenizer, train_on="assistant", max_length=4096, markers=markers)
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>'
    first = f"{content}\n{call}" if content else call
    assert trained_runs(tokenizer, example) == [first, "It is 21 degrees in Paris.<|im_end|>"]
    text = tokenizer.decode(example.input_ids)
    assert "You are Qwen, created by Alibaba Cloud" in text and "# Tools" in text
    assert same_as_transformers(example.input_ids, hf_ids(tokenizer, chat.as_dicts("object"), tools=list(chat.tools)))


def test_qwen_adds_its_default_system_prompt_untrained(load):
    tokenizer, template, markers = load("qwen2.5-instruct")
    chat = conversation(("user", "Hi"), ("assistant", "Hello."))
    [example] = encode(chat, template, tokenizer, train_on="assistant", max_length=4096, markers=markers)
    assert tokenizer.decode(example.input_ids).startswith("<|im_start|>system\nYou are Qwen")
    assert trained_runs(tokenizer, example) == ["Hello.<|im_end|>"]


def test_llama_tool_call_trains_the_json_call(load):
    """Llama 3.2 writes a tool-call turn as a JSON object instead of its content."""
    tokenizer, template, markers = load("llama-3.2-3b-instruct")
    chat = tool_conversation("")
    examples = encode(chat, template, tokenizer, train_on="assistant", max_length=4096, markers=markers)
    assert [run for e in examples for run in trained_runs(tokenizer, e)] == [
        '{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>',
        "It is 21 degrees in Paris.<|eot_id|>",
    ]


REASONING = conversation(
    ("system", "Think first."),
    ("user", "2+2?"),
    ("assistant", "<think>\nAdd.\n</think>\n\n4"),
    ("user", "3+3?"),
    ("assistant", "<think>\nAdd again.\n</think>\n\n6"),
)


def test_deepseek_drops_reasoning_so_it_is_refused_unless_dropped(load):
    """This R1-distill revision strips everything up to `</think>` from every assistant turn, the
    final one included, and its generation prompt is `<｜Assistant｜>` alone: the reasoning in the
    data could never train. That is refused, naming the way out; with `template.drop: [reasoning]`
    the answers train, one example, as the model generates them at inference."""
    from tunesmith.formatting.encode import build_template as build

    tokenizer, template, markers = load("deepseek-r1-distill-qwen-32b")
    with pytest.raises(UserError, match=r"drops the <think> reasoning of assistant messages\[2\].*template.drop"):
        encode(REASONING, template, tokenizer, train_on="assistant", max_length=4096, markers=markers)
    dropping = build(tokenizer, "model", drop=("reasoning",))
    examples = encode(REASONING, dropping, tokenizer, train_on="assistant", max_length=4096, markers=markers)
    eos = "<｜end▁of▁sentence｜>"
    assert [run for e in examples for run in trained_runs(tokenizer, e)] == [f"4{eos}", f"6{eos}"]
    assert "Add" not in "".join(tokenizer.decode(e.input_ids) for e in examples)


def test_deepseek_without_reasoning_is_one_example(load):
    tokenizer, template, markers = load("deepseek-r1-distill-qwen-32b")
    [example] = encode(
        multi_turn("deepseek"), template, tokenizer, train_on="assistant", max_length=4096, markers=markers
    )
    assert len(trained_runs(tokenizer, example)) == 2


def test_qwen35_history_rewriting_makes_one_example_per_turn_and_the_report_counts_rows(load):
    """Qwen3.5 writes the think block only after the last user message: an earlier turn, rendered as
    the final one at inference, has it; in the whole conversation it does not. So each turn is its
    own example, and the report still counts one row."""
    tokenizer, template, markers = load("trl-qwen3_5_nothink")
    examples, report = encode_split(
        [multi_turn("qwen")], template, tokenizer, train_on="assistant", max_length=4096, markers=markers, split="train"
    )
    assert (report.rows, report.examples, len(examples)) == (1, 2, 2)
    assert all("<think>\n\n</think>\n\n" in tokenizer.decode(e.input_ids) for e in examples)
    assert report.tokens == sum(len(e.input_ids) for e in examples)


def test_smollm3_generation_blocks_mark_the_trained_text(load):
    """SmolLM3 wraps each whole assistant turn in `{% generation %}`, "<|im_start|>assistant\\n"
    included; that header is the generation prompt at inference, so it does not train, and neither
    does the newline after `<|im_end|>`. In think mode (the default) a turn's reasoning is
    generated text and trains."""
    tokenizer, template, markers = load("smollm3-3b")
    assert template.has_generation_blocks
    chat = conversation(
        ("user", "Hi"), ("assistant", "<think>\nGreet back.\n</think>\nHello!"), ("user", "Say ok"), ("assistant", "ok")
    )
    [example] = encode(chat, template, tokenizer, train_on="assistant", max_length=4096, markers=markers)
    assert trained_runs(tokenizer, example) == ["<think>\nGreet back.\n</think>\nHello!<|im_end|>", "ok<|im_end|>"]
    _assert_inside_transformers_assistant_mask(tokenizer, chat, example)


def test_smollm3_no_think_mode_does_not_train_the_empty_think_block(load):
    """With /no_think the template writes "<think>\\n\\n</think>\\n" before each answer, inside the
    generation block; its generation prompt writes the same, so at inference it is prompt."""
    tokenizer, template, markers = load("smollm3-3b")
    chat = conversation(
        ("system", "Be terse. /no_think"),
        ("user", "Hi"),
        ("assistant", "Hello!"),
        ("user", "Say ok"),
        ("assistant", "ok"),
    )
    [example] = encode(chat, template, tokenizer, train_on="assistant", max_length=4096, markers=markers)
    assert "<think>\n\n</think>" in tokenizer.decode(example.input_ids)
    assert trained_runs(tokenizer, example) == ["Hello!<|im_end|>", "ok<|im_end|>"]
    _assert_inside_transformers_assistant_mask(tokenizer, chat, example)
    [last] = encode(chat, template, tokenizer, train_on="last", max_length=4096, markers=markers)
    assert trained_runs(tokenizer, last) == ["ok<|im_end|>"]


def _assert_inside_transformers_assistant_mask(tokenizer, chat, example):
    """Every trained token lies in a generation block as transformers computes them."""
    out = tokenizer.apply_chat_template(
        chat.as_dicts(), tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    assert same_as_transformers(example.input_ids, out["input_ids"])
    trained = [i for i, label in enumerate(example.labels) if label != IGNORE_INDEX]
    assert trained and all(out["assistant_masks"][i] for i in trained)


def test_gemma_refuses_a_system_message_with_an_error_naming_the_template(load):
    tokenizer, template, markers = load("gemma-1-2b-it")
    chat = conversation(("system", "Be terse."), ("user", "Hi"), ("assistant", "Hello."))
    with pytest.raises(
        UserError,
        match=r"^chat template gemma-1-2b-it \(the model's own\) refused the "
        r"conversation: System role not supported$",
    ):
        encode(chat, template, tokenizer, train_on="assistant", max_length=4096, markers=markers)
    with pytest.raises(UserError, match=r"^mem.jsonl:1: chat template gemma-1-2b-it .* System role not supported"):
        encode_split([chat], template, tokenizer, train_on="assistant", max_length=4096, markers=markers, split="train")


@pytest.mark.parametrize("name", ["phi-3-mini-128k-instruct", "granite-3.1-1b-a400m-instruct", "qwen2.5-instruct"])
def test_an_answer_with_leading_space_does_not_train_the_role_marker(name, load):
    """Phi-3's `<|assistant|>` is an added token that strips whitespace to its right, so with an
    answer that starts with a space the marker's characters run into the answer's span. A marker
    that starts before the answer is the template's, never trained."""
    tokenizer, template, markers = load(name)
    chat = conversation(("user", "Hi"), ("assistant", " Hello there."))
    [example] = encode(chat, template, tokenizer, train_on="assistant", max_length=4096, markers=markers)
    [run] = trained_runs(tokenizer, example)
    assert run.strip().startswith("Hello there.") and run.endswith(EOT[name])
    assert "assistant" not in run


def test_nemotron_trains_plain_answers_with_thinking_off_through_template_variables(template_models):
    """Nemotron 3 Super's generation prompt opens `<think>\\n` by default, but it renders an answer
    without reasoning as `<think></think>answer`: refused (see the matrix). With the variable its
    template reads, `enable_thinking: false`, the prompt ends `<think></think>` and the answer trains."""

    from tunesmith.formatting.encode import build_template as build

    tokenizer = AutoTokenizer.from_pretrained(template_models["trl-nemotron_3_super"])
    default = build(tokenizer, "model")
    chat = multi_turn("nemotron")
    with pytest.raises(UserError, match=r"generation prompt.*template.variables \(e.g. enable_thinking: false\)"):
        encode(
            chat,
            default,
            tokenizer,
            train_on="assistant",
            max_length=4096,
            markers=end_of_turn_markers(tokenizer, default),
        )
    off = build(tokenizer, "model", variables={"enable_thinking": False})
    examples = encode(
        chat, off, tokenizer, train_on="assistant", max_length=4096, markers=end_of_turn_markers(tokenizer, off)
    )
    assert [run for e in examples for run in trained_runs(tokenizer, e)] == [
        "Hello! How can I help?<|im_end|>",
        "ok ok<|im_end|>",
    ]
    prompt = off.render(chat.as_dicts()[:2], add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n<think></think>")
    assert (
        tokenizer.apply_chat_template(
            chat.as_dicts()[:2], add_generation_prompt=True, tokenize=False, enable_thinking=False
        )
        == prompt
    )


def test_generation_blocks_are_a_check_that_refuses_a_block_around_the_wrong_text(template_models):
    """SmolLM3's blocks hold each turn's generated text (the tests above pass through the check); a
    template whose block marks the user's text instead is refused, naming both."""

    from tunesmith.formatting.template import ChatTemplate

    tokenizer = AutoTokenizer.from_pretrained(template_models["smollm3-3b"])
    wrong = ChatTemplate(
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.role == 'user' %}{% generation %}"
        "{{ m.content }}{% endgeneration %}{% else %}{{ m.content }}{% endif %}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
        name="wrong.jinja",
    )
    chat = conversation(("user", "Hi there"), ("assistant", "Hello!"))
    with pytest.raises(UserError, match=r"^chat template wrong.jinja marks 'Hi there' as generated .* 'Hello!"):
        encode(chat, wrong, tokenizer, train_on="assistant", max_length=512, markers=("<|im_end|>",))
