"""The one typed config: schema, loading with file:line errors, `--set` overrides, secret redaction."""

from tunesmith.config.load import config_to_yaml, load_config, with_run_name, with_settings
from tunesmith.config.redact import REDACTED, redact_config, redact_text, redacted_keys
from tunesmith.config.schema import Config

__all__ = [
    "REDACTED",
    "Config",
    "config_to_yaml",
    "load_config",
    "redact_config",
    "redact_text",
    "redacted_keys",
    "with_run_name",
    "with_settings",
]
