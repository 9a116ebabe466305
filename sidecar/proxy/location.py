"""``Location`` and ``Content-Location`` on the way back: an absolute URL at the upstream's
target is rewritten to the origin the app called, as nginx's ``proxy_redirect default`` does.

The app reaches the API only through the sidecar; a redirect (or MOEX registration's 202
``Location``) to ``https://api…`` would make it open a CONNECT tunnel of its own, which the
sidecar refuses. Only the target's own origin (scheme, host, port; the default port written
or not, the host in any case) and, when the target has a path prefix, URLs under it are
rewritten. Anything else (relative values, other hosts or ports, userinfo) stays byte for byte.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from sidecar.http1.wire import DEFAULT_PORTS

_PATH_START = (b"/", b"?", b"#")


class TargetUrls:
    """The upstream's ``target``, parsed once, to recognise URLs that point at it."""

    __slots__ = ("default_port", "host", "port", "prefix", "scheme")

    def __init__(self, target: str) -> None:
        parts = urlsplit(target)
        scheme = parts.scheme.lower()
        self.scheme = scheme.encode()
        self.host = (parts.hostname or "").rstrip(".").encode("idna")
        self.default_port = DEFAULT_PORTS[scheme]
        self.port = parts.port or self.default_port
        self.prefix = parts.path.rstrip("/").encode("latin-1")

    def rewrite(self, value: bytes, app_origin: str) -> bytes:
        """``value`` with the target's origin (and path prefix) replaced by ``app_origin``;
        ``value`` itself when it points anywhere else."""
        sep = value.find(b"://")
        if sep <= 0 or value[:sep].strip().lower() != self.scheme:
            return value
        rest = value[sep + 3:].rstrip()
        end = len(rest)
        for ch in _PATH_START:
            i = rest.find(ch, 0, end)
            if i >= 0:
                end = i
        authority, tail = rest[:end], rest[end:]
        if not self._is_target(authority):
            return value
        prefix = self.prefix
        if prefix:
            if not tail.startswith(prefix):
                return value
            tail = tail[len(prefix):]
            if tail and not tail.startswith(_PATH_START):
                return value  # /api2 is not under /api
            if not tail.startswith(b"/"):
                tail = b"/" + tail
        return app_origin.encode("latin-1") + tail

    def _is_target(self, authority: bytes) -> bool:
        if b"@" in authority:
            return False  # userinfo: not a URL the sidecar wrote for the app
        if authority.startswith(b"["):
            close = authority.find(b"]")
            if close < 0:
                return False
            host, port_part = authority[1:close], authority[close + 1:]
            if port_part and not port_part.startswith(b":"):
                return False
            port_text = port_part[1:]
        else:
            host, _, port_text = authority.partition(b":")
        if port_text:
            if not port_text.isdigit():
                return False
            port = int(port_text)
        else:
            port = self.default_port
        return port == self.port and host.rstrip(b".").lower() == self.host
