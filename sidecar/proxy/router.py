"""Which upstream a request is for: by the absolute-form URI's authority, else by ``Host``.

Only configured hosts route anywhere; everything else is refused (never an open proxy).
A ``match`` entry ``host`` matches that host on any port; ``host:port`` only that port.
"""

from __future__ import annotations

from typing import NamedTuple

from sidecar.config.fields import parse_host_port

# Apps call a handful of hosts: their parsed authorities are kept (bounded, cleared when full),
# as (host, port, the origin the app called).
_AUTHORITIES: dict[tuple[str, int], tuple[str, int, str]] = {}
_MAX_AUTHORITIES = 1024


class BadTarget(Exception):
    """A request target the sidecar will not interpret; answered with 400."""


class Target(NamedTuple):
    host: str
    port: int
    path_qs: str  # raw path and query, byte for byte as the app sent them
    # The origin the app called ("http://" + the authority it wrote), where a Location that
    # points at the upstream's target is sent back to (see location.py).
    origin: str = ""


def request_target(raw_target: str, host_header: str | None) -> Target:
    """Split an HTTP request-target (absolute-form or origin-form) into authority and path."""
    lowered = raw_target[:8].lower()
    if lowered.startswith(("http://", "https://")):
        scheme_len = raw_target.index("://") + 3
        rest = raw_target[scheme_len:]
        cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
        authority, path_qs = rest[:cut], rest[cut:]
        if "@" in authority:
            raise BadTarget("userinfo in the request URI is not accepted")
        if path_qs.startswith("?"):
            path_qs = "/" + path_qs
        default_port = 443 if lowered.startswith("https") else 80
    elif raw_target.startswith("/"):
        if not host_header:
            raise BadTarget("origin-form request without a Host header")
        authority, path_qs, default_port = host_header, raw_target, 80
    else:
        raise BadTarget("request target must be an absolute URI or start with /")
    key = (authority, default_port)
    found = _AUTHORITIES.get(key)
    if found is None:
        try:
            host, port = parse_host_port(authority, default_port=default_port)
        except ValueError as exc:
            raise BadTarget(str(exc)) from None
        # An absolute https:// URI (an app using the sidecar as a gateway) gets https back,
        # so a port-less authority still means the port it called.
        scheme = "https://" if default_port == 443 else "http://"
        found = (host, port, scheme + authority)
        if len(_AUTHORITIES) >= _MAX_AUTHORITIES:
            _AUTHORITIES.clear()
        _AUTHORITIES[key] = found
    return Target(found[0], found[1], path_qs or "/", found[2])


class Router:
    def __init__(self, matches: dict[str, list[str]]) -> None:
        self._exact: dict[tuple[str, int], str] = {}
        self._any_port: dict[str, str] = {}
        for name, entries in matches.items():
            for entry in entries:
                host, port = parse_host_port(entry, default_port=0)
                if port:
                    self._exact[(host, port)] = name
                else:
                    self._any_port[host] = name

    def resolve(self, host: str, port: int) -> str | None:
        host = host.rstrip(".").lower()
        return self._exact.get((host, port)) or self._any_port.get(host)
