"""Reading the config: YAML file, then ``SIDECAR_<SECTION>__<FIELD>`` overrides, then validation.

Every user mistake becomes a :class:`ConfigError` whose lines name the field path and the fix;
the CLI prints them and exits 2, with no traceback.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import SecretStr, ValidationError

from sidecar.config.models import Auth, Config

ENV_PREFIX = "SIDECAR_"
ENV_CONFIG_PATH = "SIDECAR_CONFIG"


class ConfigError(Exception):
    """A configuration the sidecar cannot run with; ``problems`` are one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def load_config(path: str | Path | None, environ: Mapping[str, str] | None = None) -> Config:
    environ = os.environ if environ is None else environ
    path = path or environ.get(ENV_CONFIG_PATH)
    if not path:
        raise ConfigError([f"no config file: pass --config PATH or set {ENV_CONFIG_PATH}"])
    data = _read_yaml(Path(path))
    apply_env_overrides(data, environ)
    return validate_config(data)


def validate_config(data: dict[str, Any]) -> Config:
    odd = [repr(k) for k in data if not isinstance(k, str)]
    if odd:
        raise ConfigError([f"{k}: unknown field (top-level keys are names)" for k in odd])
    try:
        return Config(**data)
    except ValidationError as exc:
        raise ConfigError(format_errors(exc)) from None


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"config file not found: {path}"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 text (bad byte at offset {exc.start})"]) from None
    except OSError as exc:
        raise ConfigError([f"cannot read config file {path}: {exc.strerror}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        reason = getattr(exc, "problem", None) or "syntax error"
        # The parser quotes the text it choked on, which may be an unquoted password: cut it.
        reason = re.sub(r"'[^']*'", "'…'", reason)
        raise ConfigError([f"{path}: not valid YAML{where}: {reason}"]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: the top level must be a mapping (listen:, upstreams:, ...)"])
    return data


def _norm(key: str) -> str:
    return key.lower().replace("-", "_")


def apply_env_overrides(data: dict[str, Any], environ: Mapping[str, str]) -> None:
    """Merge ``SIDECAR_A__B__C=value`` into ``data['a']['b']['c']`` in place.

    Keys match case-insensitively with ``_`` standing for ``-``, so ``SIDECAR_UPSTREAMS__
    MOEX_NTB__AUTH__PASSWORD_FILE`` reaches ``upstreams.moex-ntb.auth.password_file``.
    """
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or name == ENV_CONFIG_PATH:
            continue
        parts = [p for p in name[len(ENV_PREFIX):].split("__") if p]
        if not parts:
            continue
        node: dict[str, Any] = data
        for i, part in enumerate(parts):
            key = next((k for k in node if _norm(str(k)) == _norm(part)), part.lower())
            if i == len(parts) - 1:
                raw = environ[name]
                node[key] = raw if _is_secret_name(parts[-1]) else _env_value(raw)
            else:
                child = node.get(key)
                if not isinstance(child, dict):
                    child = {}
                    node[key] = child
                node = child


def _is_secret_name(name: str) -> bool:
    lowered = name.lower()
    return any(w in lowered for w in _SECRET_WORDS) and not lowered.endswith(("_url", "_file"))


def _env_value(raw: str) -> Any:
    # Lists and mappings are written as YAML flow ("[a, b]"); everything else stays a string
    # so that a numeric password is not turned into a number.
    if raw.strip().startswith(("[", "{")):
        try:
            return yaml.safe_load(raw)
        except yaml.YAMLError:
            return raw
    return raw


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
        # A discriminated union puts the tag ("oidc_password") into the path: drop it.
        loc = [str(p) for i, p in enumerate(err["loc"]) if not _is_union_tag(err["loc"], i)]
        path = ".".join(loc) or "config"
        kind = err["type"]
        message = _MESSAGES.get(kind) or err["msg"].removeprefix("Value error, ")
        if not loc and ": " in message:  # a whole-config check names its own field path
            path, message = message.split(": ", 1)
        given = err.get("input")
        if kind == "union_tag_invalid" and isinstance(given, dict):
            message = f"unknown type {given.get('type')!r}; expected one of " + ", ".join(
                sorted(_AUTH_TYPES)
            )
        elif kind not in ("missing", "extra_forbidden", "value_error") and not isinstance(
            given, dict | list
        ):
            if given is not None and not _is_secret_path(loc):
                message += f" (got {given!r})"
        # Secret-file errors are raised for the whole block: move the field name into the path.
        field, sep, rest = message.partition(": ")
        if sep and field.endswith("_file") and field.isidentifier():
            path, message = f"{path}.{field}", rest
        lines.append(f"{path}: {message}")
    return lines


def _is_union_tag(loc: tuple[Any, ...], i: int) -> bool:
    return i > 0 and loc[i - 1] == "auth" and loc[i] in _AUTH_TYPES


# The auth types, read from the models so this list can never drift from them.
_AUTH_TYPES = {
    get_args(model.model_fields["type"].annotation)[0] for model in get_args(get_args(Auth)[0])
}
_SECRET_WORDS = ("password", "secret", "token")


def _is_secret_path(loc: list[str]) -> bool:
    return bool(loc) and any(w in loc[-1] for w in _SECRET_WORDS) and not loc[-1].endswith("_url")


def redacted(config: Config) -> dict[str, Any]:
    """The effective config as plain data with every secret shown as ``***``."""

    def walk(value: Any) -> Any:
        if isinstance(value, SecretStr):
            return "***"
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [walk(v) for v in value]
        if isinstance(value, Path):
            return str(value)
        return value

    return walk(config.model_dump())


def referenced_files(path: str | Path, environ: Mapping[str, str] | None = None) -> set[Path]:
    """The config file and every ``*_file`` it names (certificates, keys, secrets)."""
    environ = os.environ if environ is None else environ
    data = _read_yaml(Path(path))
    apply_env_overrides(data, environ)
    found = {Path(path)}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if isinstance(key, str) and key.endswith("_file") and isinstance(value, str):
                    found.add(Path(value))
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(data)
    return found
