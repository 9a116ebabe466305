"""One-shot HTTP/1.1 calls for the sidecar's own traffic (IdP logins, NCANode signing): one
short (TLS) exchange per call, since such calls are minutes apart and a kept connection would
only go stale, with bounded answers. Runs on the same HTTP/1.1 client as the proxy, and
through the same egress proxy when a :class:`~sidecar.http1.dial.Dialer` is given.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from typing import Any
from urllib.parse import urlencode, urlsplit

from multidict import CIMultiDict

from sidecar import __version__
from sidecar.http1.dial import Dialer
from sidecar.http1.errors import TimedOut, TooLarge
from sidecar.http1.pool import ConnectionPool, request_head
from sidecar.http1.wire import DEFAULT_PORTS

MAX_ANSWER = 1024 * 1024  # an IdP answer is a few KiB; more is refused, not buffered


class Fetched:
    """A whole answer, read into memory (it is small: see ``MAX_ANSWER``)."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: CIMultiDict[str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


class Fetcher:
    def __init__(
        self, ssl_context: ssl.SSLContext | None, timeout: float, dialer: Dialer | None = None
    ) -> None:
        self._ssl = ssl_context
        self.timeout = timeout
        self.dialer = dialer

    def renew_tls(self, ssl_context: ssl.SSLContext) -> None:
        """New TLS material for the next call."""
        self._ssl = ssl_context

    async def request(
        self,
        method: str,
        url: str,
        *,
        form: dict[str, str] | None = None,
        json_body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> Fetched:
        """One call, answer read whole (up to ``MAX_ANSWER``), within ``timeout`` seconds.
        Failures come as :class:`~sidecar.http1.errors.TransportError` subclasses.

        Redirects are never followed: a 302 is an answer like any other."""
        parts = urlsplit(url)
        if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url}")
        tls = parts.scheme == "https"
        context = self._ssl if tls else None
        if tls and context is None:
            context = ssl.create_default_context()
        port = parts.port or DEFAULT_PORTS[parts.scheme]
        tunnel = self.dialer.tunnel_for(parts.hostname, port, tls) if self.dialer else None
        pool = ConnectionPool(
            parts.hostname, port, context,
            connect_timeout=self.timeout, read_timeout=self.timeout, tunnel=tunnel,
        )
        out: CIMultiDict[str] = CIMultiDict(headers or {})
        body = b""
        if form is not None:
            body = urlencode(form).encode()
            out.setdefault("Content-Type", "application/x-www-form-urlencoded")
        elif json_body is not None:
            body = json.dumps(json_body).encode()
            out.setdefault("Content-Type", "application/json")
        if body or method in ("POST", "PUT", "PATCH"):
            out["Content-Length"] = str(len(body))
        out.setdefault("Accept", "*/*")
        out.setdefault("User-Agent", f"authsidecar/{__version__}")
        out["Connection"] = "close"
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        data = request_head(method, path, parts.netloc.rsplit("@", 1)[-1], out) + body
        try:
            async with asyncio.timeout(self.timeout):
                conn = await pool.connect()
                try:
                    response = await conn.request(method, data, None, False)
                    chunks: list[bytes] = []
                    size = 0
                    while chunk := await response.readany():
                        size += len(chunk)
                        if size > MAX_ANSWER:
                            raise TooLarge(pool.label, f"more than {MAX_ANSWER} bytes")
                        chunks.append(chunk)
                finally:
                    pool.release(conn, reuse=False)
        except TimedOut:
            raise
        except TimeoutError:  # the whole call's deadline, whatever step it was at
            raise TimedOut(pool.label, self.timeout) from None
        return Fetched(response.status, response.headers, b"".join(chunks))

    async def close(self) -> None:
        """Nothing stays open between calls; kept so flows can close what they own."""
