"""Configuration: models mirror the YAML contract one to one; the loader reads and checks it."""

from sidecar.config.loader import (
    ConfigError,
    load_config,
    redacted,
    referenced_files,
    validate_config,
)
from sidecar.config.models import Config, Upstream, parse_host_port

__all__ = [
    "Config",
    "ConfigError",
    "Upstream",
    "load_config",
    "parse_host_port",
    "redacted",
    "referenced_files",
    "validate_config",
]
