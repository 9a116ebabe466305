"""One proxied request, in order: local checks → token → send (body streamed) → token
rejected? new token once and replay → stream the answer back.
"""

from __future__ import annotations

import time

import aiohttp
import structlog
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from sidecar.auth.base import NoToken, Token
from sidecar.proxy.body import BodyTooLarge, RequestBody
from sidecar.proxy.errors import error_response
from sidecar.proxy.forward import UpstreamFailure
from sidecar.proxy.headers import downstream_headers, upstream_headers
from sidecar.proxy.upstream import UpstreamRuntime

log = structlog.get_logger("sidecar.proxy")

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
INSPECT_LIMIT = 64 * 1024  # the most of an error body read to learn why the API refused


async def forward(
    request: web.BaseRequest, upstream: UpstreamRuntime, path_qs: str
) -> web.StreamResponse:
    started = time.monotonic()
    name = upstream.name
    cfg = upstream.config
    length = request.content_length

    refusal = _local_checks(request, upstream, length)
    if refusal is not None:
        return refusal
    try:
        token = await upstream.tokens.get()
    except NoToken as exc:
        return _no_token(exc, name)

    if request.headers.get("Expect", "").lower() == "100-continue":
        # We are ready for the body now that a token is in hand.
        await request.writer.write(_CONTINUE)
    body = RequestBody(request.content, length, cfg.replay_limit) if request.body_exists else None
    if body is not None and cfg.max_body is not None and length is None:
        try:
            await body.buffer_up_to(cfg.max_body)
        except BodyTooLarge:
            return error_response(
                413, "body_too_large",
                f"chunked request body exceeds max_body {cfg.max_body}", upstream=name,
            )

    url = URL(cfg.target + path_qs, encoded=True)
    headers = upstream_headers(request.headers, cfg.headers, cfg.header_date)
    replayed = False
    inspected = b""
    try:
        resp = await _send(request, upstream, url, headers, token, body, first=True)
        if resp.status == 401 or resp.status in upstream.rejection.inspect_statuses:
            inspected = await _inspect(resp, upstream)
            rejected, code = upstream.rejection.token_rejected(resp.status, inspected)
            if code is not None:
                log.info("upstream_fault", upstream=name, status=resp.status, code=code,
                         token_rejected=rejected)
            retry = await _fresh_token_for_replay(upstream, token, body) if rejected else None
            if retry is not None:
                resp.close()
                replayed, inspected = True, b""
                resp = await _send(request, upstream, url, headers, retry, body, first=False)
    except UpstreamFailure as exc:
        log.warning("upstream_failed", upstream=name, reason=exc.reason)
        return error_response(exc.status, exc.error, exc.reason, upstream=name)
    except NoToken as exc:
        return _no_token(exc, name)

    try:
        return await _stream_back(request, resp, name, inspected)
    finally:
        resp.release()
        log.info(
            "request",
            upstream=name,
            method=request.method,
            path=path_qs.split("?", 1)[0],
            status=resp.status,
            duration_ms=round((time.monotonic() - started) * 1000, 2),
            replayed=replayed,
        )


def _local_checks(
    request: web.BaseRequest, upstream: UpstreamRuntime, length: int | None
) -> web.Response | None:
    """What the sidecar refuses itself, before a token is fetched or a byte is sent."""
    cfg = upstream.config
    required = cfg.require_headers.get(request.method, []) + cfg.require_headers.get("*", [])
    missing = [h for h in required if h not in request.headers]
    if missing:
        return error_response(
            400, "missing_header",
            f"{request.method} to {upstream.name} requires header(s): {', '.join(missing)}",
            upstream=upstream.name,
        )
    if cfg.max_body is not None and length is not None and length > cfg.max_body:
        return error_response(
            413, "body_too_large",
            f"request body of {length} bytes exceeds max_body {cfg.max_body}",
            upstream=upstream.name,
        )
    return None


def _no_token(exc: NoToken, name: str) -> web.Response:
    return error_response(503, "no_token", exc.reason, upstream=name, retry_after=exc.retry_after)


async def _send(
    request: web.BaseRequest,
    upstream: UpstreamRuntime,
    url: URL,
    headers: CIMultiDict[str],
    token: Token,
    body: RequestBody | None,
    *,
    first: bool,
) -> aiohttp.ClientResponse:
    data = None if body is None else (body.stream() if first else body.replay())
    headers["Authorization"] = f"Bearer {token.value}"
    return await upstream.client.send(request.method, url, headers, data)


async def _inspect(resp: aiohttp.ClientResponse, upstream: UpstreamRuntime) -> bytes:
    """Read the start of an error answer whose body tells whether the token was refused."""
    if resp.status not in upstream.rejection.inspect_statuses:
        return b""
    chunks: list[bytes] = []
    size = 0
    try:
        while size < INSPECT_LIMIT:
            chunk = await resp.content.read(INSPECT_LIMIT - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise UpstreamFailure(
            502, "upstream_error", f"{upstream.name} broke off its {resp.status} answer"
        ) from exc
    return b"".join(chunks)


async def _fresh_token_for_replay(
    upstream: UpstreamRuntime, used: Token, body: RequestBody | None
) -> Token | None:
    """The token was refused: drop it (if still current) and get another, if a replay can work."""
    upstream.tokens.invalidate(used)
    if body is not None and not body.replayable:
        log.info("replay_impossible", upstream=upstream.name, reason="body over replay_limit")
        return None
    fresh = await upstream.tokens.get()
    if fresh.value == used.value:
        return None  # nothing new to try: the app gets the upstream's answer
    return fresh


async def _stream_back(
    request: web.BaseRequest, resp: aiohttp.ClientResponse, name: str, already_read: bytes
) -> web.StreamResponse:
    out = web.StreamResponse(status=resp.status, reason=resp.reason)
    out.headers.extend(downstream_headers(resp.headers))
    await out.prepare(request)
    try:
        if already_read:
            await out.write(already_read)
        async for chunk in resp.content.iter_any():
            await out.write(chunk)
    except (aiohttp.ClientError, TimeoutError) as exc:
        # The upstream broke off mid-body. Close the app's connection too, so it sees a broken
        # response rather than a short one that looks complete.
        log.warning("upstream_body_broken", upstream=name, reason=type(exc).__name__)
        if request.transport is not None:
            request.transport.abort()
        return out
    await out.write_eof()
    return out
