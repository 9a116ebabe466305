"""Reading the config: YAML file, then ``SIDECAR_<SECTION>__<FIELD>`` overrides, then validation.

Every user mistake becomes a :class:`ConfigError` whose lines name the field path and the fix;
the CLI prints them and exits 2, with no traceback.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, get_args

from pydantic import ValidationError

from sidecar.config.auth import PLAINTEXT_ERROR, Auth, SignerConfig
from sidecar.config.errors import ConfigError
from sidecar.config.files import config_files
from sidecar.config.models import Config
from sidecar.config.secrets import read_location, redacted
from sidecar.config.sources import (
    ENV_CONFIG_PATH,
    ConfigFile,
    EnvOverrides,
    check_top_level_keys,
)

__all__ = [
    "ENV_CONFIG_PATH",
    "ConfigError",
    "apply_env_overrides",
    "config_warnings",
    "format_errors",
    "load_config",
    "redacted",
    "referenced_files",
    "validate_config",
]


def load_config(path: str | Path | None, environ: Mapping[str, str] | None = None) -> Config:
    environ = os.environ if environ is None else environ
    path = path or environ.get(ENV_CONFIG_PATH)
    if not path:
        raise ConfigError([f"no config file: pass --config PATH or set {ENV_CONFIG_PATH}"])
    file = ConfigFile(Config, Path(path))
    # Highest priority first: variables override the file.
    sources = (EnvOverrides(Config, environ, file.init_kwargs), file)
    try:
        return Config(_build_sources=(sources, {}))
    except ValidationError as exc:
        raise ConfigError(format_errors(exc)) from None


def apply_env_overrides(data: dict[str, Any], environ: Mapping[str, str]) -> None:
    """Merge ``SIDECAR_…`` variables into config data in place, as :func:`load_config` does."""
    _merge(data, EnvOverrides(Config, environ, data)())


def _merge(data: dict[str, Any], overrides: Mapping[str, Any]) -> None:
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            _merge(data[key], value)
        else:
            data[key] = value


def validate_config(data: dict[str, Any]) -> Config:
    check_top_level_keys(data)
    try:
        return Config(**data)
    except ValidationError as exc:
        raise ConfigError(format_errors(exc)) from None


def config_warnings(config: Config) -> list[str]:
    """What is allowed but unsafe, one line each: plain-http targets."""
    return [
        f"upstreams.{name}.target: plain http:// carries requests and their tokens "
        f"unencrypted; use https://, or set upstreams.{name}.allow_plaintext: true"
        for name, upstream in config.upstreams.items()
        if upstream.plaintext_target
    ]


_MESSAGES = {
    "missing": "is required",
    "extra_forbidden": "unknown field (check the spelling against the configuration reference)",
    "url_parsing": "not a valid URL",
    "union_tag_invalid": "unknown type",
    "union_tag_not_found": "needs a 'type' field",
}


def format_errors(exc: ValidationError) -> list[str]:
    lines = []
    for err in exc.errors(include_url=False):
        loc, secret = read_location(Config, err["loc"])
        path = ".".join(loc) or "config"
        kind = err["type"]
        message = _MESSAGES.get(kind) or err["msg"].removeprefix("Value error, ")
        if not loc and ": " in message:  # a whole-config check names its own field path
            path, message = message.split(": ", 1)
        given = err.get("input")
        if kind == PLAINTEXT_ERROR:
            field = err.get("ctx", {}).get("field", "")
            message = (
                "plain http:// would send credentials in clear; "
                f"use https://, or set {path}.allow_plaintext: true"
            )
            path = f"{path}.auth.{field}"
        elif kind == "union_tag_invalid" and isinstance(given, dict):
            tags = _SIGNER_TYPES if loc and loc[-1] == "signer" else _AUTH_TYPES
            message = f"unknown type {given.get('type')!r}; expected one of " + ", ".join(
                sorted(tags)
            )
        elif kind not in ("missing", "extra_forbidden", "value_error") and not isinstance(
            given, dict | list
        ):
            # A secret's value is never shown, whatever its type (a numeric PIN too).
            if given is not None and not secret:
                message += f" (got {given!r})"
        # Secret-file errors are raised for the whole block: move the field name into the path.
        field, sep, rest = message.partition(": ")
        if sep and field.endswith("_file") and field.isidentifier():
            path, message = f"{path}.{field}", rest
        lines.append(f"{path}: {message}")
    return lines


def _tags(union: Any) -> set[str]:
    """The ``type`` values of a tagged union, read from the models so they never drift."""
    members = get_args(get_args(union)[0])
    return {tag for model in members for tag in get_args(model.model_fields["type"].annotation)}


_AUTH_TYPES = _tags(Auth)
_SIGNER_TYPES = _tags(SignerConfig)


def referenced_files(path: str | Path, environ: Mapping[str, str] | None = None) -> set[Path]:
    """The config file and every file it names (certificates, keys, secrets). A config that
    does not validate raises :class:`ConfigError`: the reloader keeps the files it knew."""
    return {Path(path)} | config_files(load_config(path, environ))
