"""Configuration: models mirror the YAML contract one to one; the loader reads and checks it."""

from sidecar.config.fields import parse_host_port
from sidecar.config.files import config_files, signer_files, tls_files
from sidecar.config.loader import (
    ConfigError,
    config_warnings,
    load_config,
    redacted,
    referenced_files,
    validate_config,
)
from sidecar.config.models import Config, Upstream

__all__ = [
    "Config",
    "ConfigError",
    "Upstream",
    "config_files",
    "config_warnings",
    "load_config",
    "parse_host_port",
    "redacted",
    "referenced_files",
    "signer_files",
    "tls_files",
    "validate_config",
]
