"""One-shot HTTP/1.1 calls for the sidecar's own traffic (IdP logins, NCANode signing): one
short (TLS) exchange per call, since such calls are minutes apart and a kept connection would
only go stale, with bounded answers. Runs on the proxy's HTTP/1.1 client.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from typing import Any
from urllib.parse import urlencode, urlsplit

from multidict import CIMultiDict

from sidecar import __version__
from sidecar.http1.client import ConnectionPool, request_head

MAX_ANSWER = 1024 * 1024  # an IdP answer is a few KiB; more is refused, not buffered
_DEFAULT_PORTS = {"http": 80, "https": 443}


class ConnectFailed(OSError):
    """The connection (or its TLS handshake) to the IdP could not be made."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


class AnswerTooLarge(Exception):
    """The peer's answer was over ``MAX_ANSWER`` bytes."""


class Reply:
    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: CIMultiDict[str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


class Fetcher:
    def __init__(self, ssl_context: ssl.SSLContext | None, timeout: float) -> None:
        self._ssl = ssl_context
        self.timeout = timeout

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
    ) -> Reply:
        """One call, answer read whole (up to ``MAX_ANSWER``), within ``timeout`` seconds.

        Redirects are never followed: a 302 is an answer like any other."""
        parts = urlsplit(url)
        if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url}")
        tls = parts.scheme == "https"
        context = self._ssl if tls else None
        if tls and context is None:
            context = ssl.create_default_context()
        pool = ConnectionPool(
            parts.hostname, parts.port or _DEFAULT_PORTS[parts.scheme], context,
            connect_timeout=self.timeout, read_timeout=self.timeout,
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
        async with asyncio.timeout(self.timeout):
            try:
                conn = await pool.connect()
            except (OSError, ssl.SSLError) as exc:
                raise ConnectFailed(exc) from None
            try:
                response = await conn.request(method, data, None, False)
                chunks: list[bytes] = []
                size = 0
                while chunk := await response.readany():
                    size += len(chunk)
                    if size > MAX_ANSWER:
                        raise AnswerTooLarge(
                            f"{parts.hostname} answered with more than {MAX_ANSWER} bytes"
                        )
                    chunks.append(chunk)
            finally:
                pool.release(conn, reuse=False)
        return Reply(response.status, response.headers, b"".join(chunks))

    async def close(self) -> None:
        """Nothing stays open between calls; kept so flows can close what they own."""
