"""Secrets never leave the process: one redaction (tunesmith.config.redact) for the run folder's
config.yaml, the trackers' params and the model card.

The end-to-end test trains the tiny random model with hostile values in the config (an MLflow URL
with user:password@, given with --set, tokens of every known shape and a secret environment value inside eval.regex,
a secret query parameter) and in the environment (HF_TOKEN, WANDB_API_KEY, ...), tracking to MLflow
(a real sqlite store), W&B (offline) and TensorBoard, then searches every byte of the run folder,
the stores, the home folder, the output and the model card for them.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from tunesmith.config import Config, config_to_yaml, load_config
from tunesmith.config.redact import (
    REDACTED,
    is_secret_key,
    redact_config,
    redact_text,
    redact_tree,
    redacted_keys,
    secret_values,
    url_credentials,
)

# hostile values in the config
MLFLOW_PASSWORD = "Mlfl0w-PASSWORD-in-url-7731"
HF = "hf_Q7rTzX2mKpL9vWcY4nBsD8fGhJ3aE6uRtN"
SK = "sk-proj-4fJ9xQ2LmZr7TvW8kY3nB6cD1sH5gA0e"
GHP = "ghp_1a2B3c4D5e6F7g8H9i0JkLmNoPqRsTuVwXyZ"
AKIA = "AKIAIOSFODNN7EXAMPLE"
BEARER = "eW91LWZvdW5kLXRoZS1iZWFyZXItdG9rZW4tOTk5"
QUERY = "QuerySECRETvalue0042"
# hostile values in the environment (one of them also written into the config)
ENV_SECRETS = {
    "HF_TOKEN": "hf_test_SECRET123hfTokenValue000000000",
    "HUGGING_FACE_HUB_TOKEN": "hf_test_SECRET456hubTokenValue111111",
    "WANDB_API_KEY": "test0SECRET789wandbKey0123456789abcdefgh",
    "MLFLOW_TRACKING_TOKEN": "mlflow_test_SECRET_token_abc123",
    "OPENAI_API_KEY": "sk-test-SECRET-openai-key-0987",
}
HOSTILE = {
    "mlflow_uri password": MLFLOW_PASSWORD,
    "hf token": HF,
    "openai key": SK,
    "github token": GHP,
    "aws key id": AKIA,
    "bearer credential": BEARER,
    "query secret": QUERY,
    **ENV_SECRETS,
}

RUN = "redaction-run-SENTINEL"
MLFLOW_URI = f"http://alice:{MLFLOW_PASSWORD}@127.0.0.1:5000"
REGEX = (
    rf"^(?:\{{.*\}}|{HF}|{SK}|{GHP}|{AKIA}|Bearer {BEARER}|"
    rf"https://api\.example\.com/v1\?access_token={QUERY}&page=2|{ENV_SECRETS['MLFLOW_TRACKING_TOKEN']})$"
)

# A tracking URI with a password cannot name a sqlite file, so MLflow's http(s) store builder is
# swapped for one that opens the real sqlite store (mlflow-skinny ships no server), recording the
# URI MLflow was given and a digest of the basic-auth password it would send.
SHIM = r"""
import functools, hashlib, json, os, sys
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
from mlflow.tracking._tracking_service import utils

@functools.cache
def _store():
    return SqlAlchemyStore(os.environ["SHIM_DB"], os.environ["SHIM_ARTIFACTS"])

def build(store_uri=None, artifact_uri=None):
    seen = {"uri": store_uri, "user": os.environ.get("MLFLOW_TRACKING_USERNAME"),
            "password_sha256": hashlib.sha256(os.environ.get("MLFLOW_TRACKING_PASSWORD", "").encode()).hexdigest()}
    with open(os.environ["SHIM_SEEN"], "a", encoding="utf-8") as handle:
        handle.write(json.dumps(seen) + "\n")
    return _store()

for scheme in ("http", "https"):
    utils._tracking_store_registry.register(scheme, build)
from tunesmith.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def _rows(n: int, offset: int = 0) -> str:
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"What is {i} plus {i}?"},
                {"role": "assistant", "content": f"{i + i}"},
            ]
        }
        for i in range(offset, offset + n)
    ]
    return "".join(json.dumps(r) + "\n" for r in rows)


@pytest.fixture(scope="module")
def hostile_run(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("redaction")
    work, home, store, outside = root / "work", root / "home", root / "store", root / "outside"
    for folder in (work, home, store, outside):
        folder.mkdir()
    (work / "train.jsonl").write_text(_rows(12), encoding="utf-8")
    (work / "test.jsonl").write_text(_rows(2, 50), encoding="utf-8")
    config = {
        "name": RUN,
        "output_dir": str(root / "runs"),
        "model": {"name": str(tiny_model_dir)},
        "data": {"train": "train.jsonl", "validation": "train.jsonl", "test": "test.jsonl"},
        "template": {"max_length": 64},
        "lora": {"r": 4},
        "train": {"epochs": 1, "batch_size": 4, "packing": "none", "learning_rate": 1.0e-2},
        "eval": {"metrics": ["exact", "regex"], "regex": REGEX, "compare_base": False, "max_new_tokens": 4},
        "tracking": {"backends": ["mlflow", "wandb", "tensorboard"], "project": "redaction-test"},
    }
    (work / "run.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MLFLOW_", "WANDB_", "TENSORBOARD_", "XDG_", "HF_MLFLOW_", "TUNESMITH_"))
    }
    env |= ENV_SECRETS | {
        "HOME": str(home),
        "HF_HUB_OFFLINE": "1",
        "TUNESMITH_CACHE": str(home / "cache"),
        "WANDB_CONFIG_DIR": str(home / "wandb-config"),
        "WANDB_CACHE_DIR": str(home / "wandb-cache"),
        "WANDB_DATA_DIR": str(home / "wandb-data"),
        "SHIM_DB": f"sqlite:///{store / 'mlflow.db'}",
        "SHIM_ARTIFACTS": str(store / "artifacts"),
        "SHIM_SEEN": str(outside / "seen.jsonl"),
    }
    # the URL with the password comes on the command line, which trackers record too (W&B's args)
    command = [sys.executable, "-c", SHIM, "train", "run.yaml", "--set", f"tracking.mlflow_uri={MLFLOW_URI}"]
    done = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    run_dir = root / "runs" / RUN
    seen = [json.loads(line) for line in (outside / "seen.jsonl").read_text().splitlines()]
    return SimpleNamespace(
        root=root, run_dir=run_dir, store=store, home=home, stdout=done.stdout, stderr=done.stderr, seen=seen
    )


def _files(*roots: Path) -> list[Path]:
    return [p for root in roots for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()]


def _leaks(files: list[Path], texts: dict[str, str]) -> list[str]:
    found = []
    for name, secret in HOSTILE.items():
        needle = secret.encode()
        found += [f"{name} in {p}" for p in files if needle in p.read_bytes()]
        found += [f"{name} in {where}" for where, text in texts.items() if secret in text]
    return found


def test_no_hostile_value_reaches_the_run_folder_the_stores_the_output_or_the_card(hostile_run, monkeypatch):
    from tunesmith.export.hub import push_run

    for name, value in ENV_SECRETS.items():  # pushing with the same environment
        monkeypatch.setenv(name, value)
    logged: list[str] = []
    card = push_run(hostile_run.run_dir, "alice/redaction-test", dry_run=True, log=logged.append).card
    files = _files(hostile_run.run_dir, hostile_run.store, hostile_run.home)
    # the scan sees inside every store: the run name is in each, byte for byte
    stores = {
        "mlflow": [hostile_run.store / "mlflow.db"],
        "wandb": [p for p in files if p.suffix == ".wandb"],
        "tensorboard": [p for p in files if "tfevents" in p.name],
    }
    for store, paths in stores.items():
        assert paths and all(p.is_file() for p in paths), store
        assert any(RUN.encode() in p.read_bytes() for p in paths), store
    assert (hostile_run.run_dir / "eval" / "results.json").is_file() and "## Evaluation" in card
    leaks = _leaks(
        files,
        {
            "stdout": hostile_run.stdout,
            "stderr": hostile_run.stderr,
            "the model card": card,
            "the dry-run listing": "\n".join(logged),
        },
    )
    assert leaks == []


def test_the_run_folder_config_shows_where_secrets_were(hostile_run):
    saved = yaml.safe_load((hostile_run.run_dir / "config.yaml").read_text(encoding="utf-8"))
    assert saved["tracking"]["mlflow_uri"] == f"http://alice:{REDACTED}@127.0.0.1:5000"
    regex = saved["eval"]["regex"]
    assert regex.count(REDACTED) == 7 and regex.startswith(r"^(?:\{.*\}|") and f"Bearer {REDACTED}" in regex
    assert rf"\?access_token={REDACTED}&page=2" in regex
    config = load_config(hostile_run.run_dir / "config.yaml")  # still a valid config
    assert redacted_keys(config) == ["eval.regex", "tracking.mlflow_uri"]
    assert config.train.learning_rate == 0.01 and config.data.train.endswith("train.jsonl")


def test_mlflow_got_the_url_without_credentials_and_logged_redacted_params(hostile_run):
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    assert hostile_run.seen and {s["uri"] for s in hostile_run.seen} == {"http://127.0.0.1:5000"}
    assert {s["user"] for s in hostile_run.seen} == {"alice"}  # basic auth through MLflow's own variables
    assert {s["password_sha256"] for s in hostile_run.seen} == {hashlib.sha256(MLFLOW_PASSWORD.encode()).hexdigest()}
    store = SqlAlchemyStore(f"sqlite:///{hostile_run.store / 'mlflow.db'}", str(hostile_run.store / "artifacts"))
    experiment = store.get_experiment_by_name("redaction-test")
    (run,) = store.search_runs([experiment.experiment_id], None, 1)
    params = run.data.params
    assert params["tunesmith.tracking.mlflow_uri"] == f"http://alice:{REDACTED}@127.0.0.1:5000"
    assert REDACTED in params["tunesmith.eval.regex"] and params["tunesmith.name"] == RUN
    assert run.info.status == "FINISHED" and "loss" in run.data.metrics


# --------------------------------------------------------------------------------------- the rules


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("https://alice:s3cr3t@host.example/x", f"https://alice:{REDACTED}@host.example/x"),
        ("postgresql+psycopg2://u:p@ss:w0rd@db:5432/m", f"postgresql+psycopg2://u:{REDACTED}@db:5432/m"),
        ("sqlite://u:pw@//tmp/m.db", f"sqlite://u:{REDACTED}@//tmp/m.db"),
        (
            "https://h/x?api_key=abc&page=2&X-Amz-Signature=f00d#top",
            f"https://h/x?api_key={REDACTED}&page=2&X-Amz-Signature={REDACTED}#top",
        ),
        ("blob?sv=2024&sig=AbC%2Bdef&se=1", f"blob?sv=2024&sig={REDACTED}&se=1"),
        (f"token {HF} here", f"token {REDACTED} here"),
        (f"{SK}/{GHP}/{AKIA}", f"{REDACTED}/{REDACTED}/{REDACTED}"),
        ("xoxb-1234567890-abcdefghij and github_pat_" + "A1" * 30, f"{REDACTED} and {REDACTED}"),
        (f"Authorization: Bearer {BEARER}", f"Authorization: Bearer {REDACTED}"),
        ("Authorization: Basic YWxpY2U6czNjcjN0LXBhc3N3b3Jk", f"Authorization: Basic {REDACTED}"),
        (
            "jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
            f"jwt {REDACTED}",
        ),
        ("-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----", REDACTED),
    ],
)
def test_redact_text_each_kind(text, expected):
    assert redact_text(text, []) == expected


@pytest.mark.parametrize(
    "text",
    [
        "/home/me/models/Llama-3.1-8B-instruct/tokenizer.json",
        "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        "Basic understanding, Bearer of bad news",
        "hf:HuggingFaceTB/smoltalk:train",
        "bundled:smart_home/train.jsonl",
        "max_new_tokens",
        "https://huggingface.co/alice/model",
        "git@github.com:team/repo.git",
        "http://127.0.0.1:5000",
        "https://h/x?page=2&limit=10",
        r"^\{.*\}$",
        "sk-learn",
        "task-1234567890123456789012",
    ],
)
def test_ordinary_text_is_left_alone(text):
    assert redact_text(text, []) == text


def test_secret_environment_values_are_redacted_anywhere():
    env = {
        "HF_TOKEN": "hf_abcdefgh",
        "WANDB_API_KEY": "k" * 40,
        "MLFLOW_TRACKING_PASSWORD": "pw-123456",
        "AWS_SECRET_ACCESS_KEY": "aws-xyz-123",
        "GITHUB_TOKEN": "gh-token-1",
        "MY_SERVICE_AUTH": "svc-auth-9",
        "TOKENIZERS_PARALLELISM": "false-but-long",
        "HF_HUB_OFFLINE": "1",
        "SHORT_TOKEN": "abc",
        "HF_TOKEN_PATH": "/root/.cache/huggingface/token",
        "SSH_AUTH_SOCK": "/tmp/ssh-agent.sock",
        "PWD": "/work/main",
        "PATH": "/usr/bin:/bin",
    }
    secrets = secret_values(env)
    assert set(secrets) == {"hf_abcdefgh", "k" * 40, "pw-123456", "aws-xyz-123", "gh-token-1", "svc-auth-9"}
    assert redact_text("team-hf_abcdefgh and pw-123456!", secrets) == f"team-{REDACTED} and {REDACTED}!"


def test_secret_named_keys_lose_their_whole_value():
    tree = {
        "variables": {
            "api_key": "plain",
            "hf_token": 42,
            "client_secret": ["a", "b"],
            "auth": {"user": "u"},
            "password": "",
            "enable_thinking": False,
            "max_new_tokens": 7,
            "monkey": "ok",
        }
    }
    assert redact_tree(tree, []) == {
        "variables": {
            "api_key": REDACTED,
            "hf_token": REDACTED,
            "client_secret": [REDACTED, REDACTED],
            "auth": {"user": REDACTED},
            "password": "",
            "enable_thinking": False,
            "max_new_tokens": 7,
            "monkey": "ok",
        }
    }


def test_no_config_field_is_named_like_a_secret():
    def names(model):
        for name, field in model.model_fields.items():
            yield name
            annotation = field.annotation
            if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
                yield from names(annotation)

    assert [n for n in names(Config) if is_secret_key(n)] == []


def test_an_ordinary_config_yaml_reads_back_identically(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_not_in_this_config_123")
    config = load_config(
        None,
        [
            "data.train=/data/hf_datasets/train.jsonl",
            "name=token-free",
            "tracking.mlflow_uri=http://127.0.0.1:5000",
            "eval.regex=^\\{.*\\}$",
            "template.variables={enable_thinking: false}",
        ],
    )
    assert config_to_yaml(config) == config_to_yaml(config, redact=False)
    assert Config.model_validate(yaml.safe_load(config_to_yaml(config))).model_dump() == config.model_dump()
    assert redacted_keys(config) == []


def test_config_yaml_and_tracker_params_redact_alike(tmp_path, monkeypatch):
    from tunesmith.training.tracking import config_params

    monkeypatch.setenv("WANDB_API_KEY", ENV_SECRETS["WANDB_API_KEY"])
    config = load_config(
        None,
        [
            f"data.train={tmp_path / 'a.jsonl'}",
            f"tracking.mlflow_uri={MLFLOW_URI}",
            f"eval.regex=({HF}|{ENV_SECRETS['WANDB_API_KEY']})",
            f"template.variables={{api_key: {QUERY}, enable_thinking: false}}",
        ],
    )
    dumped = config_to_yaml(config)
    params = config_params(config)
    for secret in (MLFLOW_PASSWORD, HF, ENV_SECRETS["WANDB_API_KEY"], QUERY):
        assert secret not in dumped and secret not in json.dumps(params)
    saved = yaml.safe_load(dumped)
    assert (
        params["tunesmith.tracking.mlflow_uri"]
        == saved["tracking"]["mlflow_uri"]
        == redact_config(config)["tracking"]["mlflow_uri"]
        == f"http://alice:{REDACTED}@127.0.0.1:5000"
    )
    assert params["tunesmith.eval.regex"] == saved["eval"]["regex"] == f"({REDACTED}|{REDACTED})"
    assert params["tunesmith.template.variables.api_key"] == saved["template"]["variables"]["api_key"] == REDACTED
    assert params["tunesmith.template.variables.enable_thinking"] is False


def test_mlflow_credentials_go_to_mlflows_auth_variables_for_the_run_only(tmp_path, monkeypatch):
    from tunesmith.training.tracking import setup_tracking, tracking_env

    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "the-users-own-password")
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    config = load_config(
        None,
        [
            "data.train=a.jsonl",
            "name=r",
            "tracking.backends=[mlflow]",
            "tracking.mlflow_uri=https://alice:p%40ss-w0rd@mlflow.example.com:8443/base",
        ],
    )
    env = tracking_env(config, tmp_path / "run")
    assert env["MLFLOW_TRACKING_URI"] == "https://mlflow.example.com:8443/base"
    assert env["MLFLOW_TRACKING_USERNAME"] == "alice" and env["MLFLOW_TRACKING_PASSWORD"] == "p@ss-w0rd"
    import mlflow  # noqa: F401  (setup_tracking closes runs of an imported mlflow)

    argv = ["tunesmith", "train", "--set", "tracking.mlflow_uri=https://alice:p%40ss-w0rd@mlflow.example.com"]
    monkeypatch.setattr(sys, "argv", list(argv))
    with setup_tracking(config, tmp_path / "run"):
        assert os.environ["MLFLOW_TRACKING_PASSWORD"] == "p@ss-w0rd"
        assert "p%40ss-w0rd" not in os.environ["MLFLOW_TRACKING_URI"]
        assert sys.argv[-1] == f"tracking.mlflow_uri=https://alice:{REDACTED}@mlflow.example.com"  # what W&B records
    assert sys.argv == argv
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == "the-users-own-password"
    assert "MLFLOW_TRACKING_USERNAME" not in os.environ
    # a config.yaml read back from a run folder (--resume): the redacted password is not a password
    resumed = load_config(
        None,
        [
            "data.train=a.jsonl",
            "name=r",
            "tracking.backends=[mlflow]",
            f"tracking.mlflow_uri=https://alice:{REDACTED}@mlflow.example.com",
        ],
    )
    env = tracking_env(resumed, tmp_path / "run")
    assert env["MLFLOW_TRACKING_URI"] == "https://mlflow.example.com" and "MLFLOW_TRACKING_PASSWORD" not in env
    assert url_credentials("http://127.0.0.1:5000") == ("http://127.0.0.1:5000", None, None)


def test_the_model_card_is_redacted_even_from_a_run_folder_written_before_redaction(tmp_path, monkeypatch):
    from tunesmith.export.model_card import model_card

    monkeypatch.setenv("HF_TOKEN", ENV_SECRETS["HF_TOKEN"])
    run = tmp_path / "runs" / "old-run"
    (run / "adapter").mkdir(parents=True)
    (run / "config.yaml").write_text(
        yaml.safe_dump(
            {
                "method": "lora",
                "model": {"name": "smollm2-135m-instruct"},
                "data": {"train": f"/data/export-{HF}.jsonl", "test": f"/data/{ENV_SECRETS['HF_TOKEN']}/test.jsonl"},
                "tracking": {"mlflow_uri": MLFLOW_URI},
                "eval": {"regex": SK},
                "lora": {"r": 8},
            }
        ),
        encoding="utf-8",
    )
    (run / "data_report.json").write_text(json.dumps({"splits": {"train": {"rows": 3, "tokens": 30}}}))
    (run / "adapter" / "tunesmith.json").write_text(
        json.dumps(
            {
                "base_model": "smollm2-135m-instruct",
                "end_of_turn": ["<|im_end|>"],
                "chat_template": "{{ messages }}",
                "system_prompt": f"Call the API with Authorization: Bearer {BEARER} and key {GHP}.",
            }
        )
    )
    card = model_card(run, "alice/old-run", "adapter")
    for secret in (HF, ENV_SECRETS["HF_TOKEN"], MLFLOW_PASSWORD, SK, BEARER, GHP):
        assert secret not in card
    assert f"`export-{REDACTED}.jsonl`" in card and f"Authorization: Bearer {REDACTED}" in card


def test_a_token_as_the_mlflow_user_is_kept_for_auth_but_not_printed(tmp_path):
    from tunesmith.training.tracking import tracking_env

    config = load_config(
        None,
        [
            "data.train=a.jsonl",
            "name=r",
            "tracking.backends=[mlflow]",
            "tracking.mlflow_uri=https://tok3n-as-user@mlflow.example.com",
        ],
    )
    env = tracking_env(config, tmp_path / "run")
    assert env["MLFLOW_TRACKING_URI"] == "https://tok3n-as-user@mlflow.example.com"
    assert env["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] == "true" and "MLFLOW_TRACKING_USERNAME" not in env


def test_a_secret_in_a_mapping_key_is_redacted_too():
    assert redact_tree({"roles": {HF: "user"}}, []) == {"roles": {REDACTED: "user"}}
