"""The ``egress_proxy`` block: the corporate HTTP proxy that the sidecar's own connections
(to the APIs and their IdPs) leave through, with a CONNECT tunnel each."""

from __future__ import annotations

import ipaddress
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator, SecretStr, field_validator, model_validator

from sidecar.config.fields import SecretFiles
from sidecar.http1.dial import Dialer, Tunnel, basic_authorization, split_entry


def _check_no_proxy(value: str) -> str:
    entry = value.strip().lower()
    try:
        name, port = split_entry(entry)
    except ValueError:
        raise ValueError(
            f"no_proxy entry {value!r}: bad port; write host, .domain, host:port, an IP or a "
            "CIDR block"
        ) from None
    if port is not None and not 0 < port <= 65535:
        raise ValueError(f"no_proxy entry {value!r}: port out of range")
    if not name or name == "." or any(c in name for c in " @*?") or "://" in entry:
        raise ValueError(
            f"no_proxy entry {value!r}: write host, .domain (a domain and its subdomains), "
            "host:port, an IP or a CIDR block (no scheme, no wildcards)"
        )
    if "/" in name:
        try:
            ipaddress.ip_network(name, strict=False)
        except ValueError:
            raise ValueError(f"no_proxy entry {value!r}: not a CIDR block") from None
    return entry.rstrip(".")


NoProxyEntry = Annotated[str, AfterValidator(_check_no_proxy)]


class EgressProxy(SecretFiles):
    """An HTTP proxy (Squid and the like) reached with ``CONNECT host:port``; TLS to the API
    runs end to end inside the tunnel, so the proxy sees host names, never tokens or bodies.
    A failure through it is never retried direct."""

    url: str
    username: str | None = None
    password: SecretStr | None = None
    # Hosts reached direct: host, .domain (the domain and its subdomains), host:port, IP, CIDR.
    no_proxy: list[NoProxyEntry] = []
    # http:// targets and IdP URLs go direct unless this is set (then they are tunnelled too).
    plain_http: bool = False

    @field_validator("url")
    @classmethod
    def _proxy_url(cls, value: str) -> str:
        try:
            parts = urlsplit(value.strip())
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"not a valid URL ({exc}); write http://proxy.corp:3128") from None
        if parts.scheme != "http":
            raise ValueError(
                f"expected http://host:port (got {parts.scheme or 'no'} scheme); the proxy is "
                "spoken to in plain HTTP, TLS to the API runs inside its tunnel"
            )
        if parts.username is not None or parts.password is not None:
            raise ValueError(
                "the URL must not carry a user or password; use egress_proxy.username and "
                "egress_proxy.password_file"
            )
        if not parts.hostname:
            raise ValueError("no host; write http://proxy.corp:3128")
        if port is None:
            raise ValueError(f"no port in {value!r}; write it out, e.g. http://proxy.corp:3128")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError("a proxy URL has no path or query; write http://proxy.corp:3128")
        return value.strip()

    @model_validator(mode="after")
    def _credentials_pair(self) -> EgressProxy:
        if (self.username is None) != (self.password is None):
            raise ValueError(
                "username and password go together: give both (password or password_file) "
                "or neither"
            )
        return self

    def dialer(self) -> Dialer:
        parts = urlsplit(self.url)
        assert parts.hostname is not None and parts.port is not None  # checked above
        authorization = None
        if self.username is not None and self.password is not None:
            authorization = basic_authorization(self.username, self.password.get_secret_value())
        return Dialer(
            Tunnel(parts.hostname, parts.port, authorization),
            tuple(self.no_proxy),
            self.plain_http,
        )


def egress_dialer(egress: EgressProxy | None) -> Dialer | None:
    return egress.dialer() if egress is not None else None

