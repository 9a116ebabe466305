"""An NTB-like API for the sandbox that only answers requests carrying a live token.

Besides enforcing ``Authorization: Bearer``, it reports what it received (headers, a
SHA-256 of the body, the TLS client certificate) so a user can see exactly what the
sidecar forwarded. Bodies are always streamed: the API never holds a whole request or
response body in memory, which is what makes it useful for testing large transfers.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import hashlib
import json
from collections.abc import Callable, Iterator
from typing import Any

from aiohttp import web

from sidecar.sandbox.inbound import bearer_token, drain, hash_body, request_summary

__all__ = ["DOWNLOAD_BLOCK", "MAX_DOWNLOAD", "NtbApi", "download_bytes", "download_sha256"]

DOWNLOAD_BLOCK = 64 * 1024
MAX_DOWNLOAD = 4 * 1024**3
_TRUE = ("1", "true", "yes", "on")
_INVALID_TOKEN_HEADERS = {"WWW-Authenticate": 'Bearer error="invalid_token"'}


def download_bytes(size: int, seed: str = "0") -> Iterator[bytes]:
    """Yield ``size`` deterministic pseudo-random bytes in blocks of ``DOWNLOAD_BLOCK``.

    Block ``i`` is SHAKE-256 of ``"{seed}:{i}"``: fast (C speed), reproducible from any
    language, and a shorter last block is simply a prefix of the full one.
    """
    if size < 0:
        raise ValueError("size must not be negative")
    prefix = f"{seed}:".encode()
    block = 0
    remaining = size
    while remaining > 0:
        length = min(DOWNLOAD_BLOCK, remaining)
        yield hashlib.shake_256(prefix + str(block).encode()).digest(length)
        remaining -= length
        block += 1


@functools.lru_cache(maxsize=64)
def download_sha256(size: int, seed: str = "0") -> str:
    """Hex SHA-256 of ``download_bytes(size, seed)``, cached for repeated downloads."""
    digest = hashlib.sha256()
    for chunk in download_bytes(size, seed):
        digest.update(chunk)
    return digest.hexdigest()


def _token_subject(token: str) -> str | None:
    """The JWT ``sub`` claim, read without verification (validation is done elsewhere)."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error):
        return None
    sub = payload.get("sub") if isinstance(payload, dict) else None
    return sub if isinstance(sub, str) else None


class NtbApi:
    """The API application; ``validate_token`` decides which bearer tokens are live.

    Stats: ``requests`` counts authorised requests (``request_no`` in each report),
    ``rejected`` the 401s, ``seen_tokens`` every accepted token and ``last_request`` the
    report of the latest authorised request.
    """

    def __init__(self, validate_token: Callable[[str], bool], *, prefix: str = "/ntb") -> None:
        self._validate = validate_token
        self.prefix = "/" + prefix.strip("/") if prefix.strip("/") else ""
        self.requests = 0
        self.rejected = 0
        self.seen_tokens: set[str] = set()
        self.last_request: dict[str, Any] | None = None
        self._app = web.Application()
        self._app.router.add_route("*", "/{tail:.*}", self._handle)

    @property
    def app(self) -> web.Application:
        return self._app

    def stats(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "rejected": self.rejected,
            "seen_tokens": len(self.seen_tokens),
            "last_request": self.last_request,
        }

    def reset_stats(self) -> None:
        self.requests = 0
        self.rejected = 0
        self.seen_tokens.clear()
        self.last_request = None

    def _under_prefix(self, path: str) -> bool:
        return not self.prefix or path == self.prefix or path.startswith(self.prefix + "/")

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        token = bearer_token(request.headers.get("Authorization"))
        if token is None or not self._validate(token):
            self.rejected += 1
            await drain(request)
            return web.json_response(
                {"error": "invalid_token"}, status=401, headers=_INVALID_TOKEN_HEADERS
            )
        self.requests += 1
        self.seen_tokens.add(token)
        summary = request_summary(
            request, token_sub=_token_subject(token), request_no=self.requests
        )
        if not self._under_prefix(request.path):
            await drain(request)
            self.last_request = summary
            return web.json_response({"error": "not_found", "path": request.path}, status=404)
        if request.query.get("echo", "").lower() in _TRUE:
            return await self._echo(request, summary)
        if request.method == "GET" and request.path == f"{self.prefix}/download":
            return await self._download(request, summary)

        summary["body_sha256"], summary["body_length"] = await hash_body(request)
        self.last_request = summary
        return web.json_response(summary)

    async def _echo(self, request: web.Request, summary: dict[str, Any]) -> web.StreamResponse:
        """Stream the request body straight back, chunk by chunk."""
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        if request.content_length is not None:
            response.content_length = request.content_length
        else:
            response.enable_chunked_encoding()
        await response.prepare(request)
        digest = hashlib.sha256()
        length = 0
        while chunk := await request.content.readany():
            digest.update(chunk)
            length += len(chunk)
            await response.write(chunk)
        await response.write_eof()
        summary["body_sha256"] = digest.hexdigest()
        summary["body_length"] = length
        self.last_request = summary
        return response

    async def _download(self, request: web.Request, summary: dict[str, Any]) -> web.StreamResponse:
        await drain(request)
        try:
            size = int(request.query.get("size", "0"))
        except ValueError:
            size = -1
        if not 0 <= size <= MAX_DOWNLOAD:
            return web.json_response(
                {"error": "invalid_request", "detail": f"size must be 0..{MAX_DOWNLOAD}"},
                status=400,
            )
        seed = request.query.get("seed", "0")
        # The digest needs a full pass over the data; keep the event loop free meanwhile.
        sha256 = await asyncio.to_thread(download_sha256, size, seed)
        response = web.StreamResponse(
            headers={"Content-Type": "application/octet-stream", "X-Body-Sha256": sha256}
        )
        if request.query.get("chunked", "").lower() in _TRUE:
            response.enable_chunked_encoding()
        else:
            response.content_length = size
        await response.prepare(request)
        for chunk in download_bytes(size, seed):
            await response.write(chunk)
        await response.write_eof()
        summary["download_size"] = size
        self.last_request = summary
        return response
