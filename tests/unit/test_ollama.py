"""The Ollama Modelfile: its Go TEMPLATE renders exactly what the training template rendered,
stop parameters are the end-of-turn markers, SYSTEM iff training used one, and templates Ollama
cannot represent are refused before any file is written."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tunesmith.errors import UserError
from tunesmith.export.gotemplate import render_go_template
from tunesmith.export.ollama import write_modelfile
from tunesmith.export.ollama_template import TurnWrappers, go_template, ollama_template
from tunesmith.formatting.template import ChatTemplate
from tunesmith.runfolder import RunRecord

FIXTURES = Path(__file__).parents[1] / "fixtures" / "chat_templates"
# The embedded SmolLM2's ChatML template, as a run records it (with a default system prompt).
SMOLLM = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>"
    "system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def fixture_meta(name: str, end_of_turn: list[str], system_prompt: str | None = None) -> dict:
    config = json.loads((FIXTURES / name / "tokenizer_config.json").read_text(encoding="utf-8"))
    token = lambda value: value["content"] if isinstance(value, dict) else value or ""  # noqa: E731
    return {
        "base_model": name,
        "method": "lora",
        "template_name": f"{name} (the model's own)",
        "chat_template": config["chat_template"],
        "special_tokens": {"bos_token": token(config.get("bos_token")), "eos_token": token(config.get("eos_token"))},
        "end_of_turn": end_of_turn,
        "system_prompt": system_prompt,
        "train_on": "assistant",
    }


def smollm_meta(system_prompt: str | None = "Convert the request to intent JSON.") -> dict:
    return {
        "base_model": "smollm2-135m-instruct",
        "template_name": "the model's own chat template",
        "chat_template": SMOLLM,
        "special_tokens": {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>"},
        "end_of_turn": ["<|im_end|>", "<|endoftext|>"],
        "system_prompt": system_prompt,
        "train_on": "assistant",
    }


BUILTINS = Path(__file__).parents[2] / "src" / "tunesmith" / "formatting" / "templates"


def builtin_meta(name: str, bos: str, eos: str, end_of_turn: list[str]) -> dict:
    """A run trained with a built-in template that folds the system prompt into the first user turn."""
    return {
        "base_model": name,
        "template_name": f"{name} (built-in)",
        "chat_template": (BUILTINS / f"{name}.jinja").read_text(encoding="utf-8"),
        "special_tokens": {"bos_token": bos, "eos_token": eos},
        "end_of_turn": end_of_turn,
        "system_prompt": "Convert the request to intent JSON.",
        "train_on": "assistant",
    }


REPRESENTABLE = {
    "mistral-builtin": lambda: builtin_meta("mistral", "<s>", "</s>", ["</s>"]),
    "gemma-builtin": lambda: builtin_meta("gemma", "<bos>", "<eos>", ["<end_of_turn>", "<eos>"]),
    "smollm-chatml": smollm_meta,
    "phi-3": lambda: fixture_meta("phi-3-mini-128k-instruct", ["<|endoftext|>", "<|end|>"], "Be brief."),
    "gemma": lambda: fixture_meta("gemma-1-2b-it", ["<eos>", "<end_of_turn>"]),
    "qwen2.5-like": lambda: dict(
        smollm_meta(), chat_template=(FIXTURES / "qwen2.5-instruct" / "chat_template.jinja").read_text(encoding="utf-8")
    ),
}

CHATS = [  # 1 to 6 messages
    [("user", "Turn on the lights")],
    [("user", "hi"), ("assistant", "Hello! How can I help?")],
    [("user", "What is {{ 2 + 2 }}?"), ("assistant", 'It is "4".\nAnything else?'), ("user", "Thanks ✓")],
    [("user", "a"), ("assistant", "b"), ("user", "c"), ("assistant", "d")],
    [("user", "a"), ("assistant", "b"), ("user", "c"), ("assistant", "d"), ("user", "e\tf")],
    [("user", "a"), ("assistant", "b"), ("user", "c"), ("assistant", "d"), ("user", "e"), ("assistant", "f")],
]


def conversations(with_system: bool) -> list[list[dict]]:
    chats = [[{"role": r, "content": c} for r, c in chat] for chat in CHATS]
    if with_system:
        chats += [[{"role": "system", "content": "You are a smart home.\nReply in JSON."}, *chat] for chat in chats]
    return chats


def make_run(folder: Path, meta: dict) -> tuple[Path, Path]:
    (folder / "adapter").mkdir(parents=True)
    (folder / "adapter" / "tunesmith.json").write_text(json.dumps(meta), encoding="utf-8")
    gguf = folder / "export" / "model-q8_0.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF-not-really")
    return folder, gguf


def modelfile_template(text: str) -> str:
    match = re.search(r'^TEMPLATE """(.*?)"""$', text, re.S | re.M)
    assert match, text
    return match.group(1)


@pytest.mark.parametrize("which", sorted(REPRESENTABLE))
def test_template_reproduces_the_training_render(which):
    meta = REPRESENTABLE[which]()
    chat = ChatTemplate(meta["chat_template"], name=which, special_tokens=meta["special_tokens"])
    source = ollama_template(RunRecord.from_json(meta))
    with_system = which != "gemma"  # gemma 1 refuses the system role
    for messages in conversations(with_system):
        prompt = messages[-1]["role"] != "assistant"
        assert render_go_template(source, messages) == chat.render(messages, add_generation_prompt=prompt)


def test_smollm_template_keeps_its_default_system_prompt():
    source = ollama_template(RunRecord.from_json(smollm_meta()))
    rendered = render_go_template(source, [{"role": "user", "content": "hi"}])
    assert rendered == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
        "<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_phi3_closes_a_final_answer_with_eos_as_in_training():
    source = ollama_template(RunRecord.from_json(REPRESENTABLE["phi-3"]()))
    answered = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    assert render_go_template(source, answered) == "<|user|>\nq<|end|>\n<|assistant|>\na<|end|>\n<|endoftext|>"
    assert render_go_template(source, answered[:1]) == "<|user|>\nq<|end|>\n<|assistant|>\n"


def test_modelfile_has_from_template_stops_and_system(tmp_path, capsys):
    meta = smollm_meta()
    run, gguf = make_run(tmp_path / "Quickstart Run 1", meta)
    path = write_modelfile(run, gguf)
    assert path == run / "export" / "Modelfile"
    text = path.read_text(encoding="utf-8")
    assert "\nFROM ./model-q8_0.gguf\n" in text
    assert modelfile_template(text) == ollama_template(RunRecord.from_json(meta))
    assert re.findall(r'^PARAMETER stop "(.*)"$', text, re.M) == ["<|im_end|>", "<|endoftext|>"]
    assert re.findall(r'^SYSTEM """(.*)"""$', text, re.M | re.S) == ["Convert the request to intent JSON."]
    assert "ollama create quickstart-run-1 -f " in capsys.readouterr().out
    assert sorted(p.name for p in path.parent.iterdir()) == ["Modelfile", "model-q8_0.gguf"]  # no temp file left


def test_no_system_line_without_a_training_system_prompt(tmp_path):
    run, gguf = make_run(tmp_path / "run", REPRESENTABLE["phi-3"]() | {"system_prompt": None})
    text = write_modelfile(run, gguf, name="me/phi:v1", log=lambda m: None).read_text(encoding="utf-8")
    assert "SYSTEM" not in text
    assert re.findall(r'^PARAMETER stop "(.*)"$', text, re.M) == ["<|endoftext|>", "<|end|>"]


def test_from_is_relative_to_the_modelfile(tmp_path):
    run, _ = make_run(tmp_path / "run", smollm_meta())
    elsewhere = run / "gguf" / "m.gguf"
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(b"x")
    text = write_modelfile(run, elsewhere, log=lambda m: None).read_text(encoding="utf-8")
    assert "\nFROM ../gguf/m.gguf\n" in text


def test_bad_name_and_missing_gguf_are_user_errors(tmp_path):
    run, gguf = make_run(tmp_path / "run", smollm_meta())
    with pytest.raises(UserError, match="not a valid Ollama model name"):
        write_modelfile(run, gguf, name="-bad name!", log=lambda m: None)
    with pytest.raises(UserError, match="GGUF file not found"):
        write_modelfile(run, run / "missing.gguf", log=lambda m: None)
    assert not (run / "export" / "Modelfile").exists()


def test_llama3_date_preamble_is_refused_clearly(tmp_path):
    run, gguf = make_run(tmp_path / "run", fixture_meta("llama-3.2-3b-instruct", ["<|eot_id|>"]))
    with pytest.raises(UserError, match=r"llama-3\.2-3b-instruct.*Ollama's TEMPLATE cannot represent it.*date"):
        write_modelfile(run, gguf, log=lambda m: None)
    assert not (run / "export" / "Modelfile").exists()


def test_history_rewriting_template_is_refused_before_any_file(tmp_path):
    meta = fixture_meta("deepseek-r1-distill-qwen-32b", ["<｜end▁of▁sentence｜>"])
    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    (run / "adapter" / "tunesmith.json").write_text(json.dumps(meta), encoding="utf-8")
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"x")
    with pytest.raises(UserError, match="deepseek-r1-distill-qwen-32b.*cannot represent it.*renders differently"):
        write_modelfile(run, gguf, log=lambda m: None)
    assert not (run / "export").exists()


def test_literal_braces_quotes_and_tabs_survive(tmp_path):
    source = (
        "{% for m in messages %}{{ '{{' + m.role + '}}\t\"\"\"' }}{{ m.content }}{{ '\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '{{assistant}}\t' }}{% endif %}"
    )
    meta = smollm_meta(None) | {"chat_template": source, "template_name": "braces"}
    chat = ChatTemplate(source, name="braces")
    template = ollama_template(RunRecord.from_json(meta))
    assert '"""' not in template and "\t" not in template
    for messages in conversations(True):
        prompt = messages[-1]["role"] != "assistant"
        assert render_go_template(template, messages) == chat.render(messages, add_generation_prompt=prompt)
    run, gguf = make_run(tmp_path / "run", meta)
    assert modelfile_template(write_modelfile(run, gguf, log=lambda m: None).read_text()) == template


def test_bos_is_left_to_a_gguf_that_adds_it(tmp_path):
    gguf_module = pytest.importorskip("gguf")
    meta = REPRESENTABLE["gemma"]()
    run, fake = make_run(tmp_path / "run", meta)
    assert '{{- "<bos>" }}' in modelfile_template(write_modelfile(run, fake, log=lambda m: None).read_text())
    real = run / "export" / "real.gguf"
    writer = gguf_module.GGUFWriter(str(real), "llama")
    writer.add_add_bos_token(True)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    template = modelfile_template(write_modelfile(run, real, log=lambda m: None).read_text())
    assert "<bos>" not in template and template == ollama_template(RunRecord.from_json(meta), header=False)


def test_go_renderer_follows_go_semantics_for_trim_and_else_if():
    source = (
        '{{- range $i, $m := .Messages }}\n  {{- if eq .Role "user" }}U:{{ .Content }}\n'
        '{{ else if eq $m.Role "assistant" }}A:{{ $m.Content }} {{- "!" }}\n{{ else }}?{{ end -}}\n  {{ end }}'
    )
    messages = [
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": "y "},
        {"role": "tool", "content": "z"},
    ]
    # `{{-` trims the template's own whitespace before it, never a value: "y " keeps its space
    assert render_go_template(source, messages) == "U:x\nA:y !\n?"


def test_a_hand_made_template_is_rendered_from_its_wrappers():
    wrappers = TurnWrappers(
        header="<s>",
        default_system="",
        system=None,
        user=("[U]", "\n"),
        assistant=("[A]", "</s>"),
        generation_prompt="[A]",
        closing="",
    )
    source = go_template(wrappers)
    assert render_go_template(source, [{"role": "user", "content": "q"}]) == "<s>[U]q\n[A]"
    assert render_go_template(go_template(wrappers, header=False), []) == ""


GO_PROGRAM = """package main

import (
\t"encoding/json"
\t"os"
\t"strings"
\t"text/template"
)

type Message struct {
\tRole    string `json:"role"`
\tContent string `json:"content"`
}

func main() {
\tsource, _ := os.ReadFile(os.Args[1])
\traw, _ := os.ReadFile(os.Args[2])
\tvar chats [][]Message
\tif err := json.Unmarshal(raw, &chats); err != nil {
\t\tpanic(err)
\t}
\ttmpl := template.Must(template.New("").Option("missingkey=zero").Parse(string(source)))
\tvar outs []string
\tfor _, messages := range chats {
\t\tvar b strings.Builder
\t\tif err := tmpl.Execute(&b, map[string]any{"Messages": messages, "System": ""}); err != nil {
\t\t\tpanic(err)
\t\t}
\t\touts = append(outs, b.String())
\t}
\tjson.NewEncoder(os.Stdout).Encode(outs)
}
"""


@pytest.mark.skipif(shutil.which("go") is None, reason="go is not on PATH: real text/template not checked")
@pytest.mark.parametrize("which", sorted(REPRESENTABLE))
def test_real_go_text_template_renders_the_same(which, tmp_path):
    meta = REPRESENTABLE[which]()
    source = ollama_template(RunRecord.from_json(meta))
    chats = conversations(which != "gemma")
    (tmp_path / "main.go").write_text(GO_PROGRAM, encoding="utf-8")
    (tmp_path / "template.txt").write_text(source, encoding="utf-8")
    (tmp_path / "chats.json").write_text(json.dumps(chats), encoding="utf-8")
    done = subprocess.run(
        ["go", "run", "main.go", "template.txt", "chats.json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    assert json.loads(done.stdout) == [render_go_template(source, chat) for chat in chats]


@pytest.mark.parametrize("which", ["mistral-builtin", "gemma-builtin"])
def test_a_template_that_folds_the_system_prompt_into_the_first_user_turn_is_expressed(which, tmp_path):
    """Mistral and Gemma 3 have no system turn: the prompt is joined to the first user message. The Go
    template holds it in a variable until that user turn (checked above for 1-6 message chats, with
    and without a system prompt, in Python and in real Go)."""
    meta = REPRESENTABLE[which]()
    run, gguf = make_run(tmp_path / which, meta)
    lines: list[str] = []
    template = modelfile_template(write_modelfile(run, gguf, log=lines.append).read_text())
    assert '$system := ""' in template and "$system = .Content" in template
    chat = ChatTemplate(meta["chat_template"], name=which, special_tokens=meta["special_tokens"])
    messages = [{"role": "system", "content": "Be JSON."}, {"role": "user", "content": "lights"}]
    with_system, without = render_go_template(template, messages), render_go_template(template, messages[1:])
    assert with_system == chat.render(messages, add_generation_prompt=True)
    assert "Be JSON.\n\nlights" in with_system and "Be JSON." not in without
    # Gemma strips whitespace around contents, which a Go TEMPLATE cannot: said, not hidden
    assert any("strips spaces and newlines" in line for line in lines) == (which == "gemma-builtin")
