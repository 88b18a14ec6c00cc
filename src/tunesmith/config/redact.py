"""Secret redaction: the one function every writer of a config (or of text made from one) goes through.

What is replaced by `<redacted>`:

- the value of every environment variable whose name says it holds a secret (HF_TOKEN,
  HUGGING_FACE_HUB_TOKEN, WANDB_API_KEY, MLFLOW_TRACKING_PASSWORD, MLFLOW_TRACKING_TOKEN,
  AWS_SECRET_ACCESS_KEY, OPENAI_API_KEY, GITHUB_TOKEN, any *_TOKEN / *_PASSWORD / *_SECRET /
  *_API_KEY / *_CREDENTIALS ...), wherever it appears (values of 6 characters or more; names ending
  in _PATH, _FILE, _DIR, _HOME or _SOCK hold a location, not a secret);
- the password of a URL's userinfo (`scheme://user:pass@host` -> `scheme://user:<redacted>@host`);
- URL query values whose parameter is named like a secret (token, key, secret, password, sig,
  signature, auth, credential: `?api_key=...`, `&X-Amz-Signature=...`, `&sig=...`);
- strings in the shape of known tokens: Hugging Face (hf_...), OpenAI/Anthropic (sk-...), GitHub
  (ghp_..., github_pat_...), Slack (xox.-...), AWS access key ids (AKIA..., ASIA...), Google API
  keys (AIza...), Databricks (dapi...), JSON web tokens, PEM private keys, and the credential after
  `Bearer ` / `Basic `;
- in a mapping (the config, a card's config), the whole value of a key named like a secret
  (token, api_key, key, secret, password, passwd, auth, credential, private_key, ...).

Used for the run folder's config.yaml (`config_to_yaml`), the trackers' config params
(training/tracking.py) and the model card (export/hub.py). Hashes, paths and ordinary names are
left alone: a redacted config.yaml still loads, and reads back equal when it held no secret.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

REDACTED = "<redacted>"

# environment variables that hold secrets, by name
_SECRET_ENV = re.compile(
    r"(^|_)(TOKEN|TOKENS|API_KEY|APIKEY|KEY|SECRET|SECRET_KEY|PASSWORD|PASSWD|PASS|PWD|AUTH|"
    r"ACCESS_KEY|PRIVATE_KEY|CONNECTION_STRING|CREDENTIALS?)($|_)",
    re.IGNORECASE,
)
_NOT_SECRET_ENV = re.compile(r"_(PATH|FILE|DIR|HOME|SOCK|URL_PATH)$|^(OLDPWD|PWD)$", re.IGNORECASE)
_MIN_SECRET = 6  # shorter values ("1", "true") would redact half the text

# mapping keys whose value is a secret, by name (matched on the last part of a dotted / snake name)
_SECRET_KEY = re.compile(
    r"(^|[_.-])(token|api_?key|apikey|key|secret|secret_?key|client_?secret|password|passwd|"
    r"pwd|pass|auth|authorization|credentials?|private_?key|access_?key|sas|signature)$",
    re.IGNORECASE,
)

# scheme://user:password@  (the password runs to the last @ before the path)
_URL_PASSWORD = re.compile(
    r"(?P<head>\b[a-z][a-z0-9+.-]*://[^/?#@:\s\"'<>]*):(?P<secret>[^\s/?#\"'<>]*)@", re.IGNORECASE
)
# ?name=value / &name=value / ;name=value, for secret-looking names
_QUERY_SECRET = re.compile(r"(?P<head>[?&;](?P<name>[A-Za-z0-9_.\-]*)=)(?P<secret>[^&#\s\"'<>|()\[\]{}\\,]+)")
_QUERY_NAME = re.compile(r"token|key|secret|passw|pwd|sig|auth|credential|session", re.IGNORECASE)

_TOKEN_SHAPES = [
    re.compile(p)
    for p in (
        r"\bhf_[A-Za-z0-9]{30,}",  # Hugging Face
        r"\bapi_org_[A-Za-z0-9]{30,}",  # Hugging Face (org API)
        r"\bsk-(?=[A-Za-z_-]*\d)[A-Za-z0-9_-]{20,}",  # OpenAI, Anthropic (sk-proj-, sk-ant-)
        r"\bgh[pousr]_[A-Za-z0-9]{30,}",  # GitHub
        r"\bgithub_pat_[A-Za-z0-9_]{40,}",  # GitHub fine-grained
        r"\bglpat-[A-Za-z0-9_-]{20,}",  # GitLab
        r"\bxox[abposre]-[A-Za-z0-9-]{10,}",  # Slack
        r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b",  # AWS access key id
        r"\bAIza[0-9A-Za-z_-]{35}",  # Google API key
        r"\bdapi[0-9a-f]{32}\b",  # Databricks
        r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",  # JSON web token
        r"-----BEGIN[A-Z ]*PRIVATE KEY-----[\s\S]*?-----END[A-Z ]*PRIVATE KEY-----",
    )
]
# the credential of an Authorization header: 16+ token characters, one of them a digit or symbol (not a word)
_AUTH_HEADER = re.compile(
    r"\b(?P<head>(?:Bearer|Basic)\s+)"
    r"(?P<secret>(?=[A-Za-z]*[0-9._~+/=-])[A-Za-z0-9._~+/\-]{16,}=*)",
    re.IGNORECASE,
)


def secret_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """Values of the environment variables that hold secrets (HF_TOKEN, WANDB_API_KEY, ...), longest first.

    >>> secret_values({"HF_TOKEN": "hf_abcdefgh", "TOKENIZERS_PARALLELISM": "false-long", "HF_TOKEN_PATH": "/x/y/z"})
    ['hf_abcdefgh']
    """
    environ = os.environ if environ is None else environ
    found = {
        value
        for name, value in environ.items()
        if _SECRET_ENV.search(name) and not _NOT_SECRET_ENV.search(name) and len(value.strip()) >= _MIN_SECRET
    }
    return sorted(found, key=lambda v: (-len(v), v))


def is_secret_key(name: str) -> bool:
    """Whether a mapping key names a secret (`api_key`, `hf_token`, `password`; not `max_new_tokens`).

    >>> [is_secret_key(k) for k in ("api_key", "hf_token", "Password", "max_new_tokens", "keep_checkpoints")]
    [True, True, True, False, False]
    """
    return bool(_SECRET_KEY.search(str(name)))


def redact_text(text: str, secrets: list[str] | None = None) -> str:
    """`text` with every secret it holds replaced by <redacted> (see the module docstring).

    `secrets`: the environment's secret values; default `secret_values()` of this process.

    >>> redact_text("https://me:pw@host/x?api_key=abc123&page=2", [])
    'https://me:<redacted>@host/x?api_key=<redacted>&page=2'
    >>> redact_text("Authorization: Bearer abcdefghijklmnop0123", [])
    'Authorization: Bearer <redacted>'
    >>> redact_text("Basic understanding; sha256 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c1", [])
    'Basic understanding; sha256 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c1'
    """
    if not isinstance(text, str) or not text:
        return text
    secrets = secret_values() if secrets is None else secrets
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    for shape in _TOKEN_SHAPES:
        text = shape.sub(REDACTED, text)
    text = _AUTH_HEADER.sub(lambda m: m.group("head") + REDACTED, text)
    text = _URL_PASSWORD.sub(lambda m: f"{m.group('head')}:{REDACTED}@" if m.group("secret") else m.group(0), text)
    return _QUERY_SECRET.sub(
        lambda m: (
            m.group("head") + REDACTED
            if _QUERY_NAME.search(m.group("name")) and m.group("secret") != REDACTED
            else m.group(0)
        ),
        text,
    )


def redact_tree(value: Any, secrets: list[str] | None = None, *, key: str | None = None) -> Any:
    """A copy of a JSON-like tree (dicts, lists, scalars) with secrets redacted: strings through
    `redact_text`, and the whole value of a secret-named key (when it is not empty).

    >>> redact_tree({"tracking": {"mlflow_uri": "http://u:p@h"}, "variables": {"api_key": 42, "n": 1}}, [])
    {'tracking': {'mlflow_uri': 'http://u:<redacted>@h'}, 'variables': {'api_key': '<redacted>', 'n': 1}}
    """
    secrets = secret_values() if secrets is None else secrets
    if key is not None and is_secret_key(key) and value not in (None, "", [], {}) and not isinstance(value, bool):
        if isinstance(value, (dict, list)):
            return _redact_leaves(value)
        return REDACTED
    if isinstance(value, dict):  # a secret in a key itself is redacted too
        return {
            redact_text(k, secrets) if isinstance(k, str) else k: redact_tree(v, secrets, key=str(k))
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [redact_tree(v, secrets) for v in value]
    if isinstance(value, str):
        return redact_text(value, secrets)
    return value


def _redact_leaves(value: Any) -> Any:
    """Every non-empty leaf of a secret-named key's value, keeping its shape."""
    if isinstance(value, dict):
        return {k: _redact_leaves(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact_leaves(v) for v in value]
    return REDACTED if value not in (None, "") and not isinstance(value, bool) else value


def redact_config(config: Any, secrets: list[str] | None = None) -> dict[str, Any]:
    """The resolved config as a plain JSON-like dict (every default), secrets redacted: what the run
    folder's config.yaml, the trackers and the model card show.

    >>> from tunesmith.config.schema import Config
    >>> c = Config.model_validate({"data": {"train": "a.jsonl"}, "tracking": {"mlflow_uri": "https://u:pw@h/"}})
    >>> redact_config(c, [])["tracking"]["mlflow_uri"]
    'https://u:<redacted>@h/'
    """
    data = config.model_dump(mode="json") if hasattr(config, "model_dump") else config
    return redact_tree(data, secrets)


def redacted_keys(config: Any) -> list[str]:
    """Dotted keys of a loaded config whose value holds `<redacted>` (a config.yaml from a run
    folder): settings a resumed run or a re-evaluation must be given again (`--set KEY=...`).

    >>> from tunesmith.config.schema import Config
    >>> redacted_keys(Config.model_validate({"data": {"train": "a"}, "eval": {"regex": "x<redacted>"}}))
    ['eval.regex']
    """
    data = config.model_dump(mode="json") if hasattr(config, "model_dump") else config
    found: list[str] = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{path}.{k}" if path else str(k))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}.{i}")
        elif isinstance(node, str) and REDACTED in node:
            found.append(path)

    walk(data, "")
    return found


def url_credentials(url: str) -> tuple[str, str | None, str | None]:
    """(url without its userinfo, user, password) of `scheme://user:password@host/...`, percent-decoded;
    a URL without userinfo comes back as it is, with (None, None).

    >>> url_credentials("https://alice:p%40ss@mlflow.example.com:5000/x")
    ('https://mlflow.example.com:5000/x', 'alice', 'p@ss')
    >>> url_credentials("sqlite:////tmp/mlflow.db")
    ('sqlite:////tmp/mlflow.db', None, None)
    """
    from urllib.parse import unquote

    match = re.match(r"^(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<userinfo>[^/?#\s]*)@(?P<rest>.*)$", url, re.IGNORECASE)
    if not match:
        return url, None, None
    user, sep, password = match.group("userinfo").partition(":")
    return (match.group("scheme") + match.group("rest"), unquote(user) or None, unquote(password) if sep else None)
