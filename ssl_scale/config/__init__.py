"""Typed recipe schema, strict loader with dotted overrides, and the derived values of a run."""
from .loader import ConfigError, config_from_yaml, find_recipe, load_config, parse_overrides, to_yaml
from .schema import Config

__all__ = ["Config", "ConfigError", "config_from_yaml", "find_recipe", "load_config", "parse_overrides", "to_yaml"]
