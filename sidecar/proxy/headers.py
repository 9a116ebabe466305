"""Header rules of a proxy (RFC 9110 §7.6.1): hop-by-hop headers stop here."""

from __future__ import annotations

from multidict import CIMultiDict, CIMultiDictProxy

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Answered or set by the sidecar itself on the way up.
_NOT_FORWARDED_UP = HOP_BY_HOP | {"host", "authorization", "expect"}


def _connection_listed(headers: CIMultiDictProxy[str]) -> set[str]:
    listed: set[str] = set()
    for value in headers.getall("Connection", ()):
        listed.update(t.strip().lower() for t in value.split(",") if t.strip())
    return listed


def upstream_headers(incoming: CIMultiDictProxy[str], token: str) -> CIMultiDict[str]:
    drop = _NOT_FORWARDED_UP | _connection_listed(incoming)
    out = CIMultiDict((k, v) for k, v in incoming.items() if k.lower() not in drop)
    out["Authorization"] = f"Bearer {token}"
    return out


def downstream_headers(incoming: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    drop = HOP_BY_HOP | _connection_listed(incoming)
    return CIMultiDict((k, v) for k, v in incoming.items() if k.lower() not in drop)
