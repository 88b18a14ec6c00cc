"""The one typed config: schema, loading with file:line errors, `--set` overrides."""

from tunesmith.config.load import config_to_yaml, load_config
from tunesmith.config.schema import Config

__all__ = ["Config", "config_to_yaml", "load_config"]
