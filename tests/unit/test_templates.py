"""Built-in templates, generation blocks, and the pre-flight audit (double BOS, cut turns, share)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from tunesmith.data.types import IGNORE_INDEX, Conversation, Message, Provenance
from tunesmith.errors import UserError
from tunesmith.formatting.builtin import BUILTIN_NAMES, BUILTIN_TOKENS
from tunesmith.formatting.encode import build_template, encode, end_of_turn_markers
from tunesmith.formatting.prepare import SplitReport, encode_split, warnings_for
from tunesmith.formatting.template import ChatTemplate

FIXTURES = Path(__file__).parents[1] / "fixtures" / "chat_templates"


def conversation(*turns: tuple[str, str], line: int = 1) -> Conversation:
    return Conversation(tuple(Message(role, text) for role, text in turns), Provenance("mem.jsonl", line))


CHAT = conversation(
    ("system", "Be terse."), ("user", "Hi there"), ("assistant", "Hello!"), ("user", "Say ok"), ("assistant", "ok")
)


@pytest.fixture(scope="module")
def smol_path(smol_tokenizer_dir) -> Path:
    """The embedded SmolLM2's tokenizer and template (tests/fixtures/tokenizers: no weights)."""
    return smol_tokenizer_dir


def tokenizer_for(name: str, smol_path: Path):
    """SmolLM2's tokenizer given the built-in's special tokens, BOS <s> and EOS </s>."""
    tokenizer = AutoTokenizer.from_pretrained(smol_path)
    extra = [t for t in BUILTIN_TOKENS[name] if t not in ("bos", "eos")]
    tokenizer.add_special_tokens({"additional_special_tokens": extra, "bos_token": "<s>", "eos_token": "</s>"})
    return tokenizer


EXPECTED = {
    "chatml": (
        "<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nSay ok<|im_end|>\n"
        "<|im_start|>assistant\nok<|im_end|>\n",
        "ok<|im_end|>\n",
        "<|im_end|>",
    ),
    "chatml_tools": (
        "<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nSay ok<|im_end|>\n"
        "<|im_start|>assistant\nok<|im_end|>\n",
        "ok<|im_end|>\n",
        "<|im_end|>",
    ),
    "llama3": (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe terse.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nSay ok<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nok<|eot_id|>",
        "ok<|eot_id|>",
        "<|eot_id|>",
    ),
    "mistral": ("<s>[INST] Be terse.\n\nHi there [/INST] Hello!</s>[INST] Say ok [/INST] ok</s>", " ok</s>", "</s>"),
    "gemma": (
        "<bos><start_of_turn>user\nBe terse.\n\nHi there<end_of_turn>\n"
        "<start_of_turn>model\nHello!<end_of_turn>\n<start_of_turn>user\nSay ok<end_of_turn>\n"
        "<start_of_turn>model\nok<end_of_turn>\n",
        "ok<end_of_turn>\n",
        "<end_of_turn>",
    ),
    "phi3": (
        "<|system|>\nBe terse.<|end|>\n<|user|>\nHi there<|end|>\n<|assistant|>\nHello!<|end|>\n<|user|>\nSay ok"
        "<|end|>\n<|assistant|>\nok<|end|>\n</s>",
        "ok<|end|>\n</s>",
        "<|end|>",
    ),
    "alpaca": (
        "Be terse.\n\n### Instruction:\nHi there\n\n### Response:\nHello!</s>\n\n### Instruction:\nSay ok"
        "\n\n### Response:\nok</s>",
        "ok</s>",
        "</s>",
    ),
}


def test_every_builtin_has_an_expected_rendering():
    assert (
        set(EXPECTED)
        == set(BUILTIN_NAMES)
        == {"chatml", "chatml_tools", "llama3", "mistral", "gemma", "phi3", "alpaca"}
    )


@pytest.mark.parametrize("name", BUILTIN_NAMES)
def test_builtin_renders_a_multi_turn_conversation_exactly(name, smol_path):
    tokenizer = tokenizer_for(name, smol_path)
    template = build_template(tokenizer, name)
    full, answer, eot = EXPECTED[name]
    messages = CHAT.as_dicts()
    assert template.render(messages) == full
    # what inference prompts with, then the answer and what follows it, is exactly the training text
    prompt = template.render(messages[:4], add_generation_prompt=True)
    assert prompt + answer == full
    examples = encode(
        CHAT,
        template,
        tokenizer,
        train_on="assistant",
        max_length=512,
        markers=end_of_turn_markers(tokenizer, template),
    )
    trained = "".join(
        tokenizer.decode([t for t, label in zip(e.input_ids, e.labels) if label != IGNORE_INDEX]) for e in examples
    )
    # Mistral's answer follows "[/INST] ": the byte-level tokenizer joins that space to the answer's first token.
    assert trained == (f" Hello!{eot} ok{eot}" if name == "mistral" else f"Hello!{eot}ok{eot}")
    assert all(e.eot_trained for e in examples)


@pytest.mark.parametrize("name", ["llama3", "gemma", "phi3", "chatml"])
def test_builtin_needs_its_special_tokens(name, smol_path):
    tokenizer = AutoTokenizer.from_pretrained(smol_path)
    missing = [t for t in BUILTIN_TOKENS[name] if t not in ("bos", "eos", "<|im_start|>", "<|im_end|>")]
    if not missing:  # SmolLM2 is a ChatML model: the chatml built-in fits it
        assert build_template(tokenizer, name).name == "built-in chatml"
        return
    with pytest.raises(
        UserError, match=f"built-in chat template {name} needs special tokens .*: " + ", ".join(map(_escape, missing))
    ):
        build_template(tokenizer, name)


def _escape(token: str) -> str:
    import re

    return re.escape(token)


def test_builtin_phi3_matches_phi3s_own_template():
    tokenizer = AutoTokenizer.from_pretrained(FIXTURES / "phi-3-mini-128k-instruct")
    own, builtin = build_template(tokenizer, "model"), build_template(tokenizer, "phi3")
    messages = CHAT.as_dicts()
    assert builtin.render(messages) == own.render(messages)
    prompt = messages[:4]
    assert builtin.render(prompt, add_generation_prompt=True) == own.render(prompt, add_generation_prompt=True)


def test_builtin_gemma_matches_gemmas_own_template_without_a_system_prompt(smol_path):
    tokenizer = tokenizer_for("gemma", smol_path)
    own_source = json.loads((FIXTURES / "gemma-1-2b-it" / "tokenizer_config.json").read_text())["chat_template"]
    own = ChatTemplate(own_source, name="gemma", special_tokens={"bos_token": "<bos>", "eos_token": "<eos>"})
    messages = CHAT.as_dicts()[1:]
    assert build_template(tokenizer, "gemma").render(messages) == own.render(messages)


def test_builtin_chatml_matches_qwens_template_given_a_system_prompt(smol_path):
    tokenizer = AutoTokenizer.from_pretrained(smol_path)
    qwen = ChatTemplate((FIXTURES / "qwen2.5-instruct" / "chat_template.jinja").read_text(), name="qwen")
    messages = CHAT.as_dicts()
    assert build_template(tokenizer, "chatml").render(messages) == qwen.render(messages)


def test_no_model_template_points_to_the_builtins(smol_path):
    tokenizer = AutoTokenizer.from_pretrained(smol_path)
    tokenizer.chat_template = None
    with pytest.raises(
        UserError, match="no chat template of its own.*chatml, chatml_tools, llama3, mistral, gemma, phi3, alpaca"
    ):
        build_template(tokenizer, "model")


# ---- generation blocks -----------------------------------------------------------------------

SIGNED = (
    "{% for m in messages %}{% if m.role == 'assistant' %}<|im_start|>assistant\n{% generation %}"
    "{{ m.content }} -- bot<|im_end|>{% endgeneration %}\n{% else %}<|im_start|>{{ m.role }}\n{{ m.content }}"
    "<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_generation_blocks_render_clean_and_mark_what_trains(smol_path):
    """The block holds more than the content (a signature the template adds): the block trains."""
    tokenizer = AutoTokenizer.from_pretrained(smol_path)
    template = ChatTemplate(SIGNED, name="signed.jinja")
    messages = CHAT.as_dicts()
    rendered = template.render_with_spans(messages)
    assert "\ue002" not in template.render(messages) and rendered.text == template.render(messages)
    assert [rendered.text[a:b] for a, b in rendered.blocks] == ["Hello! -- bot<|im_end|>", "ok -- bot<|im_end|>"]
    markers = end_of_turn_markers(tokenizer)
    [example] = encode(CHAT, template, tokenizer, train_on="assistant", max_length=512, markers=markers)
    trained = tokenizer.decode([t for t, label in zip(example.input_ids, example.labels) if label != IGNORE_INDEX])
    assert trained == "Hello! -- bot<|im_end|>ok -- bot<|im_end|>" and example.eot_trained
    [last] = encode(CHAT, template, tokenizer, train_on="last", max_length=512, markers=markers)
    assert (
        tokenizer.decode([t for t, label in zip(last.input_ids, last.labels) if label != IGNORE_INDEX])
        == "ok -- bot<|im_end|>"
    )


# ---- the audit -------------------------------------------------------------------------------


def test_double_bos_is_detected_and_reported():
    """The template writes BOS itself (once: we tokenize without adding special tokens); a row whose
    text starts with the BOS text gets a second one, and the audit counts it."""
    tokenizer = AutoTokenizer.from_pretrained(FIXTURES / "phi-3-mini-128k-instruct")
    template = ChatTemplate(
        "{{ bos_token }}{% for m in messages %}{{ m.content }}<|end|>{% endfor %}",
        name="bos.jinja",
        special_tokens={"bos_token": "<s>"},
    )
    markers = end_of_turn_markers(tokenizer)
    clean = conversation(("user", "Hi"), ("assistant", "Hello"))
    holds_bos = conversation(("user", "<s>Hi"), ("assistant", "Hello"), line=2)
    [one] = encode(clean, template, tokenizer, train_on="assistant", max_length=64, markers=markers)
    [two] = encode(holds_bos, template, tokenizer, train_on="assistant", max_length=64, markers=markers)
    assert one.input_ids[:2] == [tokenizer.bos_token_id, tokenizer.convert_tokens_to_ids("▁Hi")]
    assert not one.double_bos
    assert two.input_ids[:2] == [tokenizer.bos_token_id] * 2 and two.double_bos
    _, report = encode_split(
        [clean, holds_bos], template, tokenizer, train_on="assistant", max_length=64, markers=markers, split="train"
    )
    assert report.double_bos == 1
    assert any("1 train rows start with two BOS tokens" in w for w in warnings_for(report, "train"))


def test_truncated_assistant_turns_are_counted_partly_and_wholly():
    tokenizer = AutoTokenizer.from_pretrained(FIXTURES / "granite-3.1-1b-a400m-instruct")
    template, markers = build_template(tokenizer, "model"), end_of_turn_markers(tokenizer)
    chat = conversation(
        ("user", "Hi"), ("assistant", "one two three four five six"), ("user", "More"), ("assistant", "seven eight")
    )
    [full] = encode(chat, template, tokenizer, train_on="assistant", max_length=512, markers=markers)
    first_answer = next(i for i, label in enumerate(full.labels) if label != IGNORE_INDEX)
    cases = {len(full.input_ids): 0, first_answer + 2: 2, first_answer + 8: 1}  # cut: nowhere, in turn 1, after it
    for max_length, expected in cases.items():
        [example] = encode(chat, template, tokenizer, train_on="assistant", max_length=max_length, markers=markers)
        assert example.truncated_turns == expected, max_length
    _, report = encode_split(
        [chat, chat],
        template,
        tokenizer,
        train_on="assistant",
        max_length=first_answer + 2,
        markers=markers,
        split="train",
    )
    assert (report.truncated, report.truncated_turns) == (2, 4)
    assert any("4 assistant turns in train were cut by max_length" in w for w in warnings_for(report, "train"))


def test_low_trainable_share_warns():
    low = SplitReport(rows=10, tokens=1000, trainable_tokens=30, truncated=0, missing_end_of_turn=0, examples=10)
    assert any("only 3.0% of train tokens train" in w for w in warnings_for(low, "train"))
    fine = SplitReport(rows=10, tokens=1000, trainable_tokens=300, truncated=0, missing_end_of_turn=0, examples=10)
    assert warnings_for(fine, "train") == []


# ---- a template that trains nothing stops the run before the model loads -----------------------


def test_a_template_that_marks_no_assistant_token_stops_training_before_the_model_loads(tmp_path):
    import tunesmith
    from tunesmith.config import load_config

    model = tmp_path / "weightless-model"
    model.mkdir()
    for name in (
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "added_tokens.json",
        "config.json",
    ):
        shutil.copy(FIXTURES / "phi-3-mini-128k-instruct" / name, model / name)
    drops = tmp_path / "drops-answers.jinja"
    drops.write_text(
        "{% for m in messages %}{% if m.role != 'assistant' %}<|{{ m.role }}|>\n{{ m.content }}<|end|>\n"
        "{% endif %}{% endfor %}",
        encoding="utf-8",
    )
    data = tmp_path / "chat.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": f"What is {i}+{i}?"}, {"role": "assistant", "content": str(2 * i)}]}
        for i in range(4)
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    config = load_config(
        None,
        [
            f"data.train={data}",
            f"model.name={model}",
            f"output_dir={tmp_path / 'runs'}",
            "name=never",
            f"template.chat_template={drops}",
        ],
    )
    with pytest.raises(UserError, match=rf"chat.jsonl:1: chat template {drops} leaves out or rewrites the answer"):
        tunesmith.train(config)
    assert not (tmp_path / "runs" / "never").exists()
    with pytest.raises(OSError):  # loading weights would have failed differently: there are none
        from transformers import AutoModelForCausalLM

        AutoModelForCausalLM.from_pretrained(model)


def test_data_check_counts_a_split_row_once_and_warns_on_double_bos(tmp_path, smol_path):
    """Through `data check --model`: a row split into per-turn sequences is one row whose tokens
    are the sum; a template that writes BOS before ChatML's own first token gives a double BOS."""
    from tunesmith.data.check import check_files
    from tunesmith.data.options import FormatOptions
    from tunesmith.data.stats import Measured
    from tunesmith.formatting.measure import measure_for

    doubled = tmp_path / "bos.jinja"
    doubled.write_text(
        "{{ bos_token }}{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}",
        encoding="utf-8",
    )
    data = tmp_path / "d.jsonl"
    data.write_text(
        json.dumps({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}) + "\n",
        encoding="utf-8",
    )
    measure = measure_for(_tokenizer(smol_path), train_on="assistant", template=str(doubled))
    report = check_files([str(data)], options=FormatOptions(), measure=measure, max_length=64, workers=1)
    assert [(i.code, i.severity) for i in report.issues] == [("double_bos", "warning")]

    tokenizer = AutoTokenizer.from_pretrained(smol_path)
    [example] = encode(
        CHAT, ChatTemplate(SIGNED, name="s"), tokenizer, train_on="assistant", max_length=10**9, markers=("<|im_end|>",)
    )
    examples = [example] * 3  # as a row split into three sequences
    measured = Measured.of(examples, max_length=10)
    length = len(examples[0].input_ids)
    assert (measured.length, measured.longest, measured.trainable) == (3 * length, length, 3 * examples[0].n_trainable)
    assert measured.tokens_cut == 3 * (length - 10)


def test_a_short_answer_is_not_found_inside_the_template_text(smol_path):
    """Gemma trims contents, so the padded question is not verbatim and spans are searched for;
    the answer "model" must be found after the turn header, not as the header's role name."""
    tokenizer = tokenizer_for("gemma", smol_path)
    template = build_template(tokenizer, "gemma")
    chat = conversation(("user", "  Which word names your role?  "), ("assistant", "model"))
    [example] = encode(
        chat, template, tokenizer, train_on="assistant", max_length=64, markers=end_of_turn_markers(tokenizer)
    )
    trained = tokenizer.decode([t for t, label in zip(example.input_ids, example.labels) if label != IGNORE_INDEX])
    assert trained == "model<end_of_turn>" and example.eot_trained


def _tokenizer(folder):
    from tunesmith.models.load import ModelRef, load_tokenizer

    return load_tokenizer(ModelRef(str(folder), str(folder), "local"))
