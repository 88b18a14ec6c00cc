"""`tunesmith inspect`: rows as training sees them, trained tokens highlighted, the audit, an HTML page."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import fields
from importlib import resources
from pathlib import Path

import pytest
from rich.console import Console
from transformers import AutoTokenizer

from tunesmith.cli.main import main
from tunesmith.config import load_config
from tunesmith.formatting.view import html_page, segments, token_pieces, view_example, visible
from tunesmith.training.prepare import prepare

FIXTURES = Path(__file__).parents[1] / "fixtures" / "chat_templates"
QUESTIONS = [
    ("What is the capital of France? <script>alert('x')</script>", "Paris"),
    ("Name a primary colour.", "Red, or blue.\nAlso yellow 😀"),
    ("Say nothing.", "Okay"),
]


@pytest.fixture(scope="module")
def model_dir(smol_tokenizer_dir) -> Path:
    """The embedded model's tokenizer (no weights: inspect only tokenizes), named by path so each test's
    data cache can be its own."""
    return smol_tokenizer_dir


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNESMITH_CACHE", str(tmp_path / "cache"))


def write_config(tmp_path: Path, model_dir: Path, train: str, extra: str = "") -> Path:
    config = tmp_path / "inspect.yaml"
    config.write_text(f"model:\n  name: {model_dir}\ndata:\n  train: {train}\n{extra}", encoding="utf-8")
    return config


@pytest.fixture()
def chats(tmp_path) -> Path:
    path = tmp_path / "chats.jsonl"
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in QUESTIONS]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def audit_numbers(page: str) -> dict[str, int]:
    return {key: int(value) for key, value in re.findall(r'data-key="(\w+)" data-value="(\d+)"', page)}


def test_inspect_prints_rows_and_audit_and_writes_an_escaped_html_page(tmp_path, model_dir, chats, capsys):
    config = write_config(tmp_path, model_dir, str(chats))
    out_html = tmp_path / "pages" / "inspect.html"
    assert main(["inspect", str(config), "--rows", "2", "--html", str(out_html)]) == 0
    out = capsys.readouterr().out
    # Captured output has no colour, so trained spans are marked ⟦ ⟧; the answer trains with its <|im_end|>.
    assert f"{chats}:1  " in out and f"{chats}:2  " in out and f"{chats}:3  " not in out
    assert "⟦Paris<|im_end|>⟧" in out and "⟦Red, or blue.↵\nAlso yellow 😀<|im_end|>⟧" in out
    assert "<|im_start|>user\nWhat is the capital of France?" in out  # the prompt shows, untrained

    page = out_html.read_text(encoding="utf-8")
    assert '<span class="t">Paris&lt;|im_end|&gt;</span>' in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page and "<script" not in page
    assert f"{chats}:1 <small>" in page and f"{chats}:3 <small>" not in page
    assert not list(out_html.parent.glob(".*.tmp"))

    # The audit covers every row and equals token counts made here from the tokenizer alone.
    # What follows the last stop token (ChatML's newline) is left out: it trains nothing.
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    conversations = [[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in QUESTIONS]
    renders = [tokenizer.apply_chat_template(c, tokenize=False) for c in conversations]
    tokens = sum(
        len(tokenizer(text[: text.rindex("<|im_end|>") + len("<|im_end|>")], add_special_tokens=False)["input_ids"])
        for text in renders
    )
    trained = sum(len(tokenizer(a, add_special_tokens=False)["input_ids"]) + 1 for _, a in QUESTIONS)
    numbers = audit_numbers(page)
    assert (numbers["rows"], numbers["tokens"], numbers["trainable_tokens"]) == (3, tokens, trained)
    report = prepare(load_config(config), Console(quiet=True)).splits["train"].report
    assert numbers == {
        f.name: getattr(report, f.name) for f in fields(report) if isinstance(getattr(report, f.name), int)
    }
    assert f"{trained} ({trained / tokens:.1%})" in out


def test_trained_segments_are_exactly_the_trained_tokens_decoded(tmp_path, model_dir, chats):
    config = load_config(write_config(tmp_path, model_dir, str(chats)))
    prepared = prepare(config, Console(quiet=True))
    tokenizer = prepared.tokenizer
    for example, (_, answer) in zip(prepared.splits["train"].examples, QUESTIONS):
        row = view_example(tokenizer, example)
        assert "".join(s.text for s in row.segments) == tokenizer.decode(example.input_ids)
        runs, start = [], 0
        for seg in row.segments:
            if seg.trained:
                runs.append(example.input_ids[start : start + seg.tokens])
            start += seg.tokens
        trained = [s.text for s in row.segments if s.trained]
        assert trained == [tokenizer.decode(ids) for ids in runs] == [answer + "<|im_end|>"]
        assert row.trained_tokens == example.n_trainable == sum(len(ids) for ids in runs)


def test_inspect_on_the_bundled_data_shows_the_validation_split(tmp_path, model_dir, capsys):
    config = write_config(
        tmp_path,
        model_dir,
        "bundled:smart_home/train.jsonl",
        "  validation: bundled:smart_home/val.jsonl\ntemplate:\n  max_length: 256\n",
    )
    assert (
        main(["inspect", str(config), "--split", "validation", "--rows", "2", "--html", str(tmp_path / "val.html")])
        == 0
    )
    out = capsys.readouterr().out
    val = resources.files("tunesmith") / "data" / "bundled" / "smart_home" / "val.jsonl"
    answers = [json.loads(line)["messages"][-1]["content"] for line in val.read_text(encoding="utf-8").splitlines()]
    assert f"⟦{answers[0]}<|im_end|>⟧" in out and f"⟦{answers[1]}<|im_end|>⟧" in out
    assert "val.jsonl:1  " in out and "val.jsonl:2  " in out and "val.jsonl:3  " not in out
    assert "First 2 of 40 rows" in out
    assert audit_numbers((tmp_path / "val.html").read_text(encoding="utf-8"))["rows"] == len(answers) == 40


def test_a_template_that_drops_the_answers_is_exit_2_naming_the_template(tmp_path, model_dir, chats, capsys):
    template = tmp_path / "no_answers.jinja"
    template.write_text(
        "{% for m in messages %}{% if m.role != 'assistant' %}{{ m.content }}\n{% endif %}{% endfor %}",
        encoding="utf-8",
    )
    config = write_config(tmp_path, model_dir, str(chats), f"template:\n  chat_template: {template}\n")
    assert main(["inspect", str(config), "--html", str(tmp_path / "never.html")]) == 2
    err = capsys.readouterr().err
    assert f"{chats}:1: chat template {template} leaves out or rewrites the answer of assistant messages[1]" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "never.html").exists()


def test_a_row_split_into_one_sequence_per_turn_shows_each(tmp_path, model_dir, capsys):
    """A template that rewrites earlier answers trains each answer in a render where it comes last."""
    template = tmp_path / "rewrites.jinja"
    template.write_text(
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.role == 'assistant' and not "
        "loop.last %}(earlier answer){% else %}{{ m.content }}{% endif %}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
        encoding="utf-8",
    )
    data = tmp_path / "two_turns.jsonl"
    turns = [("user", "First?"), ("assistant", "first answer"), ("user", "Second?"), ("assistant", "second answer")]
    data.write_text(json.dumps({"messages": [{"role": r, "content": c} for r, c in turns]}) + "\n", encoding="utf-8")
    config = write_config(tmp_path, model_dir, str(data), f"template:\n  chat_template: {template}\n")
    assert main(["inspect", str(config), "--html", str(tmp_path / "turns.html")]) == 0
    out = capsys.readouterr().out
    assert f"{data}:1  " in out and "[sequence 1 of 2]" in out and "[sequence 2 of 2]" in out
    assert "⟦first answer<|im_end|>⟧" in out and "(earlier answer)<|im_end|>\n<|im_start|>user" in out
    assert "⟦second answer<|im_end|>⟧" in out
    numbers = audit_numbers((tmp_path / "turns.html").read_text(encoding="utf-8"))
    assert (numbers["rows"], numbers["examples"]) == (1, 2)


def test_set_overrides_apply_and_a_cut_row_says_so(tmp_path, model_dir, capsys):
    data = tmp_path / "long.jsonl"
    row = {"messages": [{"role": "user", "content": "Count."}, {"role": "assistant", "content": "one " * 60}]}
    data.write_text(json.dumps(row) + "\n", encoding="utf-8")
    config = write_config(tmp_path, model_dir, str(data))
    assert main(["inspect", str(config), "--set", "template.max_length=48"]) == 0
    out = capsys.readouterr().out
    assert f"{data}:1  48 tokens" in out and "[cut at max_length, 1 trained turn(s) with it]" in out
    assert "max_length: 48" in out and "<|im_end|>⟧" not in out


def test_a_split_the_config_lacks_is_exit_2(tmp_path, model_dir, chats, capsys):
    assert main(["inspect", str(write_config(tmp_path, model_dir, str(chats))), "--split", "validation"]) == 2
    assert "data.validation is not set" in capsys.readouterr().err


def test_rows_zero_prints_only_the_audit(tmp_path, model_dir, chats, capsys):
    assert main(["inspect", str(write_config(tmp_path, model_dir, str(chats))), "--rows", "0"]) == 0
    out = capsys.readouterr().out
    assert "First 0 of 3 rows" in out and "⟦" not in out.split("rows:", 1)[1] and "Audit of the train split" in out


def test_inspect_help_imports_no_torch():
    code = (
        "import sys; from tunesmith.cli.main import main\n"
        "try:\n    main(['inspect', '--help'])\nexcept SystemExit:\n    pass\n"
        "print('torch' in sys.modules, 'transformers' in sys.modules, file=sys.stderr)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stderr.split() == ["False", "False"] and "--rows N" in done.stdout


# ---- --json: the first rows' Examples as JSON lines ----


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_json_writes_each_example_with_its_text_trained_spans_and_prompts(tmp_path, model_dir, chats, capsys):
    config = write_config(tmp_path, model_dir, str(chats))
    out_json = tmp_path / "out" / "rows.jsonl"
    assert main(["inspect", str(config), "--rows", "2", "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert "⟦Paris<|im_end|>⟧" in out and f"Wrote {out_json}" in out  # the colour view is unchanged
    records = read_jsonl(out_json)
    assert not list(out_json.parent.glob(".*.tmp"))
    assert [r["source"] for r in records] == [f"{chats}:1", f"{chats}:2"]
    assert all(set(r) == {"source", "input_ids", "labels", "text", "trained", "prompts"} for r in records)

    # Independently of tunesmith: the text is transformers' render, the prompt its generation prompt.
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    examples = prepare(load_config(config), Console(quiet=True)).splits["train"].examples
    for record, example, (question, answer) in zip(records, examples, QUESTIONS):
        chat = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        render = tokenizer.apply_chat_template(chat, tokenize=False)  # through its last stop token
        assert record["text"] == render[: render.rindex("<|im_end|>") + len("<|im_end|>")]
        assert record["prompts"] == [
            tokenizer.apply_chat_template(chat[:1], tokenize=False, add_generation_prompt=True)
        ]
        assert record["trained"] == [answer + "<|im_end|>"]
        assert record["text"].startswith(record["prompts"][0] + record["trained"][0])
        assert (record["input_ids"], record["labels"]) == (example.input_ids, example.labels)
        trained_ids = [t for t, label in zip(record["input_ids"], record["labels"]) if label != -100]
        assert tokenizer.decode(trained_ids) == "".join(record["trained"])


def test_json_from_the_processed_data_cache_still_has_the_text(tmp_path, model_dir, chats, capsys):
    config = write_config(tmp_path, model_dir, str(chats))
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    assert main(["inspect", str(config), "--json", str(first)]) == 0
    assert main(["inspect", str(config), "--json", str(second)]) == 0
    assert "train: 3 rows from the processed-data cache" in capsys.readouterr().out
    assert second.read_text(encoding="utf-8") == first.read_text(encoding="utf-8")
    assert [r["trained"] for r in read_jsonl(second)] == [[a + "<|im_end|>"] for _, a in QUESTIONS]


def test_json_has_one_line_per_sequence_of_a_row_split_per_turn(tmp_path, model_dir, capsys):
    template = tmp_path / "rewrites.jinja"
    template.write_text(
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.role == 'assistant' and not "
        "loop.last %}(earlier answer){% else %}{{ m.content }}{% endif %}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
        encoding="utf-8",
    )
    data = tmp_path / "two_turns.jsonl"
    turns = [("user", "First?"), ("assistant", "first answer"), ("user", "Second?"), ("assistant", "second answer")]
    data.write_text(json.dumps({"messages": [{"role": r, "content": c} for r, c in turns]}) + "\n", encoding="utf-8")
    config = write_config(tmp_path, model_dir, str(data), f"template:\n  chat_template: {template}\n")
    assert main(["inspect", str(config), "--json", str(tmp_path / "turns.jsonl")]) == 0
    records = read_jsonl(tmp_path / "turns.jsonl")
    assert [r["source"] for r in records] == [f"{data}:1"] * 2
    examples = prepare(load_config(config), Console(quiet=True)).splits["train"].examples
    assert [(r["input_ids"], r["labels"]) for r in records] == [(e.input_ids, e.labels) for e in examples]
    first, second = sorted(records, key=lambda r: r["trained"][0] != "first answer<|im_end|>")
    assert first["trained"] == ["first answer<|im_end|>"] and second["trained"] == ["second answer<|im_end|>"]
    assert first["text"].endswith("first answer<|im_end|>") and "(earlier answer)" in second["text"]
    assert first["prompts"] == ["<|im_start|>user\nFirst?<|im_end|>\n<|im_start|>assistant\n"]
    assert second["prompts"] == [
        "<|im_start|>user\nFirst?<|im_end|>\n<|im_start|>assistant\n(earlier answer)"
        "<|im_end|>\n<|im_start|>user\nSecond?<|im_end|>\n<|im_start|>assistant\n"
    ]


def test_json_of_the_validation_split_raw_text_and_zero_rows(tmp_path, model_dir, chats, capsys):
    text = tmp_path / "docs.jsonl"
    text.write_text(json.dumps({"text": "Plain words to learn."}) + "\n", encoding="utf-8")
    config = write_config(tmp_path, model_dir, str(chats), f"  validation: {text}\n")
    assert main(["inspect", str(config), "--split", "validation", "--json", str(tmp_path / "val.jsonl")]) == 0
    [record] = read_jsonl(tmp_path / "val.jsonl")
    assert record["source"] == f"{text}:1" and record["prompts"] == []
    assert record["text"] == "Plain words to learn.<|im_end|>"
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert record["trained"] == [tokenizer.decode(record["input_ids"][1:])]  # every token after the first
    assert record["trained"][0].endswith("learn.<|im_end|>")
    assert main(["inspect", str(config), "--rows", "0", "--json", str(tmp_path / "none.jsonl")]) == 0
    assert (tmp_path / "none.jsonl").read_text(encoding="utf-8") == ""


# ---- the pure view helpers ----


@pytest.mark.parametrize("tokenizer_name", ["embedded", "phi-3-mini-128k-instruct"])
def test_a_character_split_over_tokens_goes_whole_to_one_piece(model_dir, tokenizer_name):
    """Byte-level BPE (SmolLM2) and SentencePiece with byte fallback (Phi-3) both split an emoji."""
    folder = model_dir if tokenizer_name == "embedded" else FIXTURES / tokenizer_name
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer("ünï 😀\n\nok ☃☃ 中文字符 done", add_special_tokens=False)["input_ids"]
    pieces = token_pieces(lambda x: tokenizer.decode(x), ids)
    assert len(pieces) == len(ids) and "".join(pieces) == tokenizer.decode(ids)
    assert "\ufffd" not in "".join(pieces) and any(p.endswith("😀") for p in pieces)


def test_segments_merge_by_flag_and_whitespace_shows_when_trained():
    assert [(s.text, s.trained, s.tokens) for s in segments(["<a>", "x", "\n", "y"], [False, True, True, False])] == [
        ("<a>", False, 1),
        ("x\n", True, 2),
        ("y", False, 1),
    ]
    assert visible("\n") == "↵\n" and visible(" ") == "·"


def test_html_page_escapes_the_source_and_notes_too():
    from tunesmith.formatting.view import RowView, Segment

    row = RowView('<b>"f".jsonl:1', 2, 1, (Segment("<i>", False, 1), Segment("&", True, 1)), ("<cut>",))
    page = html_page([row], title="<t>", subtitle="<s>", audit=[], warnings=["<w>"])
    body = page.split("</style>", 1)[1]
    assert "<b>" not in body and "<i>" not in body and "<cut>" not in body and "<w>" not in body
    assert "&lt;b&gt;&quot;f&quot;.jsonl:1" in body and '<span class="t">&amp;</span>' in body


# ---- preference rows: the prompt once, chosen and rejected (or a KTO answer and its partner) ----


@pytest.fixture()
def pairs(tmp_path) -> Path:
    path = tmp_path / "pairs.jsonl"
    rows = [
        {
            "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": q}],
            "chosen": [{"role": "assistant", "content": a}],
            "rejected": [{"role": "assistant", "content": f"Not sure. {a}?"}],
        }
        for q, a in QUESTIONS
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_inspect_of_a_dpo_run_shows_each_pair_and_writes_its_sequences_as_json(tmp_path, model_dir, pairs, capsys):
    config = write_config(tmp_path, model_dir, str(pairs), "train:\n  objective: dpo\n")
    out_json = tmp_path / "pairs-view.jsonl"
    assert main(["inspect", str(config), "--rows", "2", "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert (
        "chosen" in out and "rejected" in out and "⟦Paris<|im_end|>⟧" in out and "⟦Not sure. Paris?<|im_end|>⟧" in out
    )
    records = read_jsonl(out_json)
    assert [r["source"] for r in records] == [f"{pairs}:1", f"{pairs}:2"]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    for record, (question, answer) in zip(records, QUESTIONS):
        prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": question}]
        assert record["prompt"] == tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        chosen, rejected = record["sequences"]
        assert (chosen["part"], rejected["part"]) == ("chosen", "rejected")
        assert chosen["trained"] == answer + "<|im_end|>" and rejected["trained"] == f"Not sure. {answer}?<|im_end|>"
        for sequence in (chosen, rejected):  # the prompt's ids, then the answer's: the answer alone trains
            assert tokenizer.decode(sequence["input_ids"]).startswith(record["prompt"])
            assert tokenizer.decode(sequence["input_ids"]) == record["prompt"] + sequence["trained"]
        assert "desirable" not in record


def test_inspect_json_of_a_kto_run_marks_good_and_bad_answers(tmp_path, model_dir, pairs, capsys):
    config = write_config(tmp_path, model_dir, str(pairs), "train:\n  objective: kto\n")
    out_json = tmp_path / "kto-view.jsonl"
    assert main(["inspect", str(config), "--rows", "2", "--json", str(out_json)]) == 0
    records = read_jsonl(out_json)
    assert [r["desirable"] for r in records] == [True, False]  # a pair's good then its bad answer
    assert [r["sequences"][0]["part"] for r in records] == ["good answer", "bad answer"]
    assert records[0]["sequences"][0]["trained"] == "Paris<|im_end|>"
    assert records[1]["sequences"][0]["trained"] == "Not sure. Paris?<|im_end|>"
