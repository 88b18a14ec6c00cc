"""`tunesmith push`'s library side (export/hub.py): the plan, the model card, the token rules, and one
real upload through huggingface_hub to a small Hub emulator on 127.0.0.1 (no network)."""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tunesmith.errors import UserError
from tunesmith.export.hub import PushPlan, push_run, validate_repo_id
from tunesmith.export.model_card import model_card

TOKEN = "hf_secretTOKENvalue1234567890"
TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CONFIG = """\
name: fake-run
output_dir: runs
method: lora
model:
  name: smollm2-135m-instruct
  dtype: auto
data:
  train: bundled:smart_home/train.jsonl
  validation: /home/someone/private/val.jsonl
template:
  chat_template: model
  train_on: assistant
  max_length: 256
lora:
  r: 8
  alpha: 24.0
  dropout: 0.05
  target_modules: [q_proj, v_proj]
train:
  epochs: 2.0
  learning_rate: 0.001
  batch_size: 8
  seed: 42
"""
RESULTS = {
    "n": 60,
    "metrics": ["json_exact", "json_valid", "exact"],
    "tuned": {"json_exact": 0.9833, "json_valid": 1.0, "exact": 0.9167},
    "base": {"json_exact": 0.0123, "json_valid": 0.35, "exact": 0.0},
}
REPORT = {
    "template": "the model's own chat template",
    "system_prompt": "Convert the request to intent JSON.",
    "end_of_turn": ["<|im_end|>", "<|endoftext|>"],
    "splits": {
        "train": {
            "rows": 420,
            "tokens": 23308,
            "trainable_tokens": 10608,
            "truncated": 0,
            "trainable_share": 0.4551,
            "quarantined": 3,
        },
        "validation": {
            "rows": 40,
            "tokens": 2226,
            "trainable_tokens": 1022,
            "truncated": 0,
            "trainable_share": 0.4591,
            "quarantined": 0,
        },
        "test": {"rows": 60},
    },
}
META = {
    "base_model": "smollm2-135m-instruct",
    "template_name": "the model's own chat template",
    "chat_template": TEMPLATE,
    "special_tokens": {"eos_token": "<|im_end|>"},
    "end_of_turn": ["<|im_end|>", "<|endoftext|>"],
    "system_prompt": "Convert the request to intent JSON.",
    "train_on": "assistant",
}
ADAPTER_FILES = {
    "adapter_config.json": json.dumps({"peft_type": "LORA", "r": 8, "lora_alpha": 24.0}).encode(),
    "adapter_model.safetensors": bytes(range(256)) * 4,
    "chat_template.jinja": TEMPLATE.encode(),
    "tokenizer.json": b'{"version": "1.0"}',
    "tokenizer_config.json": b'{"eos_token": "<|im_end|>"}',
    "tunesmith.json": json.dumps(META).encode(),
}


@pytest.fixture()
def run_dir(tmp_path) -> Path:
    """A finished LoRA run: config, data report, eval results, adapter/ (with PEFT's own README.md)."""
    run = tmp_path / "runs" / "fake-run"
    (run / "adapter").mkdir(parents=True)
    (run / "eval").mkdir()
    (run / "config.yaml").write_text(CONFIG, encoding="utf-8")
    (run / "data_report.json").write_text(json.dumps(REPORT), encoding="utf-8")
    (run / "eval" / "results.json").write_text(json.dumps(RESULTS), encoding="utf-8")
    for name, data in ADAPTER_FILES.items():
        (run / "adapter" / name).write_bytes(data)
    (run / "adapter" / "README.md").write_text("---\nbase_model: /root/.cache/x\n---\nPEFT's card\n")
    return run


@pytest.fixture()
def no_token(tmp_path, monkeypatch):
    """No token anywhere: no HF_TOKEN, an empty HF_HOME, no saved login file."""
    import huggingface_hub.constants as hf_constants

    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "hf-home"
    home.mkdir()
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(hf_constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))


def _add_merged(run: Path) -> None:
    (run / "merged").mkdir()
    (run / "merged" / "config.json").write_text('{"model_type": "llama"}')
    (run / "merged" / "model.safetensors").write_bytes(b"\0" * 64)
    (run / "merged" / "tunesmith.json").write_text(json.dumps(META))


def _add_gguf(run: Path) -> None:
    (run / "export").mkdir()
    (run / "export" / "model-q8_0.gguf").write_bytes(b"GGUF" + b"\1" * 60)
    (run / "export" / "model-f16.gguf").write_bytes(b"GGUF" + b"\2" * 120)
    (run / "export" / "Modelfile").write_text("FROM ./model-q8_0.gguf\n")
    (run / "export" / "notes.txt").write_text("not uploaded")


def test_dry_run_lists_the_adapter_files_and_the_card_without_a_token(run_dir, no_token):
    logged: list[str] = []
    plan = push_run(run_dir, "alice/smart-home", dry_run=True, log=logged.append)
    assert isinstance(plan, PushPlan) and plan.repo_id == "alice/smart-home" and plan.what == "adapter"
    assert [path for _, path, _ in plan.files] == sorted(ADAPTER_FILES)  # PEFT's README.md is replaced
    for local, path, size in plan.files:
        assert local == run_dir / "adapter" / path and size == len(ADAPTER_FILES[path])
    text = "\n".join(logged)
    assert "dry run" in text
    for path, _data in ADAPTER_FILES.items():
        assert any(line.split() and line.split()[0] == path for line in logged), path
    assert any(line.split() and line.split()[0] == "README.md" for line in logged)
    assert "README.md" not in [path for _, path, _ in plan.files]


def test_dry_run_of_a_full_fine_tune_pushes_model_and_says_so(run_dir, no_token):
    (run_dir / "adapter").rename(run_dir / "model")
    logged: list[str] = []
    plan = push_run(run_dir, "alice/full", dry_run=True, log=logged.append)
    assert plan.source == run_dir / "model"
    assert any("full fine-tune" in line and "model/" in line for line in logged)
    assert "library_name: transformers" in plan.card and "PeftModel" not in plan.card


def test_merged_without_merged_folder_names_the_merge_command(run_dir):
    with pytest.raises(UserError, match=r"tunesmith merge"):
        push_run(run_dir, "alice/smart-home", what="merged", dry_run=True)


def test_gguf_without_export_names_the_export_command(run_dir):
    with pytest.raises(UserError, match=r"tunesmith export gguf"):
        push_run(run_dir, "alice/smart-home", what="gguf", dry_run=True)


def test_gguf_plan_takes_the_gguf_files_and_the_modelfile(run_dir, no_token):
    _add_gguf(run_dir)
    plan = push_run(run_dir, "alice/smart-home-gguf", what="gguf", dry_run=True, log=lambda m: None)
    assert [path for _, path, _ in plan.files] == ["model-f16.gguf", "model-q8_0.gguf", "Modelfile"]


def test_unknown_target_and_missing_run_are_user_errors(run_dir, tmp_path):
    with pytest.raises(UserError, match="adapter, merged, gguf"):
        push_run(run_dir, "alice/x", what="weights", dry_run=True)
    with pytest.raises(UserError, match="not found"):
        push_run(tmp_path / "nope", "alice/x", dry_run=True)


@pytest.mark.parametrize(
    "repo_id",
    [
        "noslash",
        "a/b/c",
        "-x/y",
        "user/re po",
        "user/",
        "/repo",
        "user/repo-",
        "user/re--po",
        "user/re..po",
        "us er/repo",
        "user/repo.git",
        "user/répo",
        "user/" + "x" * 97,
    ],
)
def test_invalid_repo_ids_are_user_errors(run_dir, repo_id):
    with pytest.raises(UserError, match="invalid Hub repo id"):
        push_run(run_dir, repo_id, dry_run=True)


@pytest.mark.parametrize("repo_id", ["alice/smart-home", "Org_1/model.v2", "a/b", "user/" + "x" * 96])
def test_valid_repo_ids_pass(repo_id):
    assert validate_repo_id(repo_id) == repo_id


def test_push_without_any_token_is_a_user_error_that_says_how(run_dir, no_token):
    with pytest.raises(UserError, match=r"hf auth login.*HF_TOKEN"):
        push_run(run_dir, "alice/smart-home", endpoint="http://127.0.0.1:9", log=lambda m: None)


def test_card_has_base_model_method_data_and_eval_numbers(run_dir):
    card = push_run(run_dir, "alice/smart-home", dry_run=True, log=lambda m: None).card
    front = card.split("---\n")[1]
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in front
    assert "library_name: peft" in front and "- tunesmith" in front and "license: apache-2.0" in front
    assert "r = 8, alpha = 24.0" in card and "q_proj, v_proj" in card
    assert "| train | 420 |" in card and "45.5%" in card and "3 bad rows" in card
    assert "60 held-out test rows" in card
    for metric in RESULTS["metrics"]:
        assert f"| {metric} | {RESULTS['base'][metric]} | {RESULTS['tuned'][metric]} |" in card
    assert TEMPLATE in card and "`<|im_end|>`, `<|endoftext|>`" in card
    assert "Convert the request to intent JSON." in card
    assert "/home/someone" not in card and "val.jsonl" in card  # a local data path shows only its file name


def test_card_without_eval_results_says_so(run_dir):
    (run_dir / "eval" / "results.json").unlink()
    card = model_card(run_dir, "alice/smart-home", "adapter")
    assert "No evaluation was recorded" in card


@pytest.mark.parametrize(
    "what, library, snippet",
    [
        ("adapter", "peft", 'PeftModel.from_pretrained(base, "alice/smart-home")'),
        ("merged", "transformers", 'AutoModelForCausalLM.from_pretrained("alice/smart-home"'),
        ("gguf", "gguf", "ollama create smart-home -f Modelfile"),
    ],
)
def test_card_says_how_to_run_each_target(run_dir, what, library, snippet):
    _add_merged(run_dir)
    _add_gguf(run_dir)
    card = push_run(run_dir, "alice/smart-home", what=what, dry_run=True, log=lambda m: None).card
    assert f"library_name: {library}" in card.split("---\n")[1]
    assert snippet in card
    if what == "gguf":
        assert "llama-cli -m smart-home/model-f16.gguf" in card
    if what == "adapter":
        assert 'from_pretrained("HuggingFaceTB/SmolLM2-135M-Instruct"' in card


# --------------------------------------------------------------------------- a Hub emulator on localhost


class _Hub:
    """Just the endpoints huggingface_hub calls for create_repo and a commit of small files."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, str]]] = []  # method, path, headers
        self.created: list[dict] = []
        self.files: dict[str, bytes] = {}
        self.commit_summary: str | None = None
        self.unknown: list[str] = []
        self.refuse = False  # answer 401 to everything, as the Hub does for a bad token


def _handler(hub: _Hub):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep pytest output clean
            pass

        def _reply(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            path = self.path.split("?")[0]
            hub.requests.append(("POST", path, {k.lower(): v for k, v in self.headers.items()}))
            if hub.refuse:
                return self._reply(401, {"error": "Invalid credentials in Authorization header"})
            if path == "/api/repos/create":
                payload = json.loads(body)
                hub.created.append(payload)
                return self._reply(
                    200, {"url": f"http://{self.headers['Host']}/{payload['organization']}/{payload['name']}"}
                )
            if path == "/api/validate-yaml":
                return self._reply(200, {})
            parts = path.split("/")  # '', api, models, ns, name, preupload|commit, revision
            if len(parts) == 7 and parts[1:3] == ["api", "models"] and parts[5] == "preupload":
                files = json.loads(body)["files"]
                return self._reply(
                    200,
                    {
                        "files": [
                            {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None}
                            for f in files
                        ]
                    },
                )
            if len(parts) == 7 and parts[1:3] == ["api", "models"] and parts[5] == "commit":
                for line in body.splitlines():
                    item = json.loads(line)
                    if item["key"] == "header":
                        hub.commit_summary = item["value"]["summary"]
                    elif item["key"] == "file":
                        hub.files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                    else:
                        hub.unknown.append(f"commit item {item['key']}")
                return self._reply(
                    200,
                    {
                        "commitUrl": f"http://{self.headers['Host']}/{parts[3]}/{parts[4]}/commit/" + "a" * 40,
                        "commitOid": "a" * 40,
                    },
                )
            hub.unknown.append(f"POST {path}")
            return self._reply(404, {"error": "not emulated"})

        def do_GET(self):
            hub.requests.append(("GET", self.path, {k.lower(): v for k, v in self.headers.items()}))
            if hub.refuse:
                return self._reply(401, {"error": "Invalid credentials in Authorization header"})
            hub.unknown.append(f"GET {self.path}")
            self._reply(404, {"error": "not emulated"})

    return Handler


@pytest.fixture()
def fake_hub(monkeypatch):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)  # conftest sets HF_HUB_OFFLINE=1 for the rest
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    hub = _Hub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    hub.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    yield hub
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_push_uploads_the_files_and_the_card_with_the_token(run_dir, no_token, fake_hub, capsys):
    logged: list[str] = []
    plan = push_run(
        run_dir, "alice/smart-home", private=True, token=TOKEN, endpoint=fake_hub.endpoint, log=logged.append
    )
    assert fake_hub.unknown == []
    assert len(fake_hub.created) == 1
    assert {k: fake_hub.created[0].get(k) for k in ("name", "organization", "visibility")} == {
        "name": "smart-home",
        "organization": "alice",
        "visibility": "private",
    }
    assert set(fake_hub.files) == set(ADAPTER_FILES) | {"README.md"}
    for name, data in ADAPTER_FILES.items():
        assert fake_hub.files[name] == data
    assert fake_hub.files["README.md"].decode("utf-8") == plan.card
    assert "fake-run" in fake_hub.commit_summary
    assert fake_hub.requests and all(
        headers.get("authorization") == f"Bearer {TOKEN}" for _, _, headers in fake_hub.requests
    )
    assert plan.commit_url and plan.commit_url.endswith("a" * 40)
    # the token never shows: not in the card, the log, or anything printed
    printed = capsys.readouterr()
    assert TOKEN not in plan.card
    assert TOKEN not in "\n".join(logged) and TOKEN not in printed.out + printed.err
    assert any("pushed" in line and "alice/smart-home" in line for line in logged)


def test_push_takes_the_token_from_hf_token(run_dir, no_token, fake_hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    logged: list[str] = []
    push_run(run_dir, "alice/smart-home", endpoint=fake_hub.endpoint, log=logged.append)
    assert all(headers.get("authorization") == f"Bearer {TOKEN}" for _, _, headers in fake_hub.requests)
    assert TOKEN not in "\n".join(logged)


def test_a_refused_token_is_a_user_error_without_the_token(run_dir, no_token, fake_hub):
    fake_hub.refuse = True
    with pytest.raises(UserError, match=r"HTTP 401.*write access") as caught:
        push_run(run_dir, "alice/smart-home", token=TOKEN, endpoint=fake_hub.endpoint, log=lambda m: None)
    assert TOKEN not in str(caught.value)
    assert not fake_hub.files


def test_push_in_offline_mode_is_a_user_error(run_dir, monkeypatch):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError, match="HF_HUB_OFFLINE"):
        push_run(run_dir, "alice/smart-home", token=TOKEN, endpoint="http://127.0.0.1:9", log=lambda m: None)
