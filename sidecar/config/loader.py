"""Reading the config: YAML file, then ``SIDECAR_<SECTION>__<FIELD>`` overrides, then validation.

Every user mistake becomes a :class:`ConfigError` whose lines name the field path and the fix;
the CLI prints them and exits 2, with no traceback.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, get_args
from urllib.parse import urlsplit

from pydantic import ValidationError

from sidecar.config.auth import PLAINTEXT_ERROR, Auth, SignerConfig
from sidecar.config.errors import ConfigError
from sidecar.config.files import config_files
from sidecar.config.models import Config
from sidecar.config.secrets import known_fields, read_location, redacted
from sidecar.config.sources import (
    ENV_CONFIG_PATH,
    ConfigFile,
    EnvOverrides,
    check_top_level_keys,
    norm_key,
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
    upstreams = file.init_kwargs.get("upstreams")
    names = list(upstreams) if isinstance(upstreams, dict) else []
    env = EnvOverrides(Config, environ, file.init_kwargs)
    variables = env.variables()
    # Highest priority first: variables override the file.
    sources = (env, file)
    try:
        return Config(_build_sources=(sources, {}))
    except ValidationError as exc:
        lines = format_errors(exc, variables)
        raise ConfigError(_unknown_upstreams(lines, variables, names, path)) from None


def _unknown_upstreams(
    lines: list[str], variables: dict[str, list[str]], names: list[str], path: str | Path
) -> list[str]:
    """Variables may add an upstream field by field; when such an upstream does not validate,
    the likelier story is a typo in a variable meant for one of the file's upstreams. Its
    errors ("match: is required"...) are replaced by one line per variable saying so."""
    known = {norm_key(n) for n in names}
    unknown = {
        variable: parts[1]
        for variable, parts in variables.items()
        if len(parts) > 2 and parts[0] == "upstreams" and norm_key(parts[1]) not in known
    }
    failed = {
        name for name in unknown.values()
        if any(norm_key(line).startswith(f"upstreams.{norm_key(name)}.") for line in lines)
    }
    if not failed:
        return lines
    kept = [
        line for line in lines
        if not any(norm_key(line).startswith(f"upstreams.{norm_key(n)}.") for n in failed)
    ]
    return kept + [
        f"{variable}: names upstream {name!r}, which {path} does not define (its upstreams: "
        f"{', '.join(names) or 'none'}); an upstream added by variables needs at least "
        "match, target and auth"
        for variable, name in sorted(unknown.items())
        if name in failed
    ]


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


def format_errors(
    exc: ValidationError, variables: Mapping[str, list[str]] | None = None
) -> list[str]:
    """One line per error: the field path as written in the file, what is wrong and the fix;
    ``variables`` (name -> key path) attribute an error to the variable that set the value."""
    lines = []
    for err in exc.errors(include_url=False):
        loc, secret = read_location(Config, err["loc"])
        path = ".".join(loc) or "config"
        kind = err["type"]
        message = _MESSAGES.get(kind) or err["msg"].removeprefix("Value error, ")
        if kind == "extra_forbidden" and loc:
            message = _unknown_field(err["loc"], loc[-1]) or message
        if len(loc) >= 2 and loc[-2] in ("match", "passthrough"):
            message = _url_as_host(err.get("input")) or message
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
        variable = _variable_of(loc, variables or {})
        for part in message.split("\n"):  # a block's secret files: one line each
            # Secret-file errors are raised for the whole block: move the field name into
            # the path.
            where = path
            field, sep, rest = part.partition(": ")
            if sep and field.endswith("_file") and field.isidentifier():
                where, part = f"{path}.{field}", rest
            if variable is not None:
                part += f" (set by {variable})"
            lines.append(f"{where}: {part}")
    return lines


def _variable_of(loc: list[str], variables: Mapping[str, list[str]]) -> str | None:
    """The variable whose value is at ``loc`` (or holds the block around it)."""
    where = [norm_key(part) for part in loc]
    for name, parts in variables.items():
        wanted = [norm_key(part) for part in parts]
        if wanted and where[: len(wanted)] == wanted:
            return name
    return None


def _unknown_field(err_loc: tuple[Any, ...], given: str) -> str | None:
    """"unknown field; did you mean `password_file`?" when a known field is close."""
    close = difflib.get_close_matches(given, sorted(known_fields(Config, err_loc[:-1])), n=1)
    if not close:
        return None
    return f"unknown field; did you mean `{close[0]}`?"


def _url_as_host(given: object) -> str | None:
    if not isinstance(given, str) or "://" not in given:
        return None
    netloc = urlsplit(given.strip()).netloc
    host = netloc.rpartition("@")[2] or "the host"
    return f"{given!r} is a URL: write the host only ({host!r}), or host:port"


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
