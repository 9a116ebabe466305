"""The building blocks of the config models: checked value types (URLs, files, addresses,
hosts) and the base models, among them :class:`SecretFiles`, which resolves every secret's
``x_file`` twin before validation.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    ModelWrapValidatorHandler,
    PrivateAttr,
    model_validator,
)

from sidecar.config.secrets import secret_file_twins


def _check_url(value: str) -> str:
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not a valid URL ({exc})") from None
    host = parts.hostname
    if parts.scheme not in ("http", "https") or not host or any(c.isspace() for c in value):
        raise ValueError(
            f"not a valid URL: expected http:// or https:// with a host (got {value!r})"
        )
    if parts.username is not None or parts.password is not None:
        # Credentials in a URL would end up in /status and logs: they belong in secret fields.
        raise ValueError("URL must not carry a user or password; use the auth secret fields")
    return value


def _check_existing_file(value: Path) -> Path:
    if not value.is_file():
        raise ValueError(f"file not found: {value}")
    return value


def parse_host_port(value: str, default_port: int | None = None) -> tuple[str, int]:
    """Split ``host:port`` (``[v6]:port`` for IPv6) into a lower-case host and a port."""
    text = value.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"not host:port: {value!r}")
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""
    if not host:
        raise ValueError(f"not host:port: {value!r} has no host")
    if not port_text:
        if default_port is None:
            raise ValueError(f"not host:port: {value!r} has no port")
        return host.lower(), default_port
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"not host:port: bad port in {value!r}")
    return host.lower(), int(port_text)


def _check_listen(value: str) -> str:
    host, _ = parse_host_port(value)
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"listen address must be an IP address, got {host!r}") from None
    return value


def _check_match(value: str) -> str:
    host, _ = parse_host_port(value, default_port=0)
    if "/" in host or "@" in host or " " in host:
        raise ValueError(f"not a host or host:port: {value!r}")
    return _strip_dot(value.strip().lower())


def _strip_dot(value: str) -> str:
    host, port = parse_host_port(value, default_port=0)
    host = host.rstrip(".")
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    return f"{host}:{port}" if port else host


HttpUrlStr = Annotated[str, AfterValidator(_check_url)]
ExistingFile = Annotated[Path, AfterValidator(_check_existing_file)]
ListenAddr = Annotated[str, AfterValidator(_check_listen)]
MatchHost = Annotated[str, AfterValidator(_check_match)]


class Model(BaseModel):
    """Strict base: unknown fields are errors, so a typo never silently does nothing."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class SecretFiles(Model):
    """Resolves ``x_file: /path`` into the secret field ``x`` before validation; which fields
    are secret is read from the annotations (``SecretStr``). The paths are kept, so that the
    reloader can watch them (:mod:`sidecar.config.files`)."""

    _secret_files: dict[str, Path] = PrivateAttr(default_factory=dict)

    @model_validator(mode="wrap")
    @classmethod
    def _read_secret_files(cls, data: Any, handler: ModelWrapValidatorHandler[Any]) -> Any:
        if not isinstance(data, dict):
            return handler(data)
        data = dict(data)
        paths: dict[str, Path] = {}
        # Every unreadable file of the block is reported at once, one per line (the loader
        # splits them): a user fixing one should not discover the next on the following run.
        problems: list[str] = []
        for twin, name in sorted(secret_file_twins(cls).items()):
            path = data.pop(twin, None)
            if path is None:
                continue
            if data.get(name) is not None:
                problems.append(f"give either {name} or {twin}, not both")
                continue
            if not isinstance(path, str | Path):
                problems.append(f"{twin}: expected a file path")
                continue
            try:
                data[name] = Path(path).read_text(encoding="utf-8").rstrip("\r\n")
            except FileNotFoundError:
                problems.append(f"{twin}: file not found: {path}")
            except UnicodeDecodeError:
                problems.append(f"{twin}: cannot read {path}: not UTF-8 text")
            except OSError as exc:
                problems.append(f"{twin}: cannot read {path}: {exc.strerror}")
            else:
                paths[twin] = Path(path)
        if problems:
            raise ValueError("\n".join(problems))
        model = handler(data)
        model._secret_files = paths
        return model

    @property
    def secret_files(self) -> set[Path]:
        """The files secrets of this block were read from."""
        return set(self._secret_files.values())
