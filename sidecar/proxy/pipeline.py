"""One proxied request, in order: local checks → token → send (body streamed) → 401? refresh
once and replay → stream the answer back.
"""

from __future__ import annotations

import time

import aiohttp
import structlog
from aiohttp import web
from yarl import URL

from sidecar.auth.base import NoToken, Token
from sidecar.proxy.body import BodyTooLarge, RequestBody
from sidecar.proxy.errors import error_response
from sidecar.proxy.forward import UpstreamFailure
from sidecar.proxy.headers import downstream_headers, upstream_headers
from sidecar.proxy.upstream import UpstreamRuntime

log = structlog.get_logger("sidecar.proxy")

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


async def forward(
    request: web.BaseRequest, upstream: UpstreamRuntime, path_qs: str
) -> web.StreamResponse:
    started = time.monotonic()
    name = upstream.name
    cfg = upstream.config
    length = request.content_length
    has_body = request.body_exists

    if cfg.max_body is not None and length is not None and length > cfg.max_body:
        return error_response(
            413, "body_too_large",
            f"request body of {length} bytes exceeds max_body {cfg.max_body}", upstream=name,
        )
    try:
        token = await upstream.tokens.get()
    except NoToken as exc:
        return error_response(
            503, "no_token", exc.reason, upstream=name, retry_after=exc.retry_after
        )

    if request.headers.get("Expect", "").lower() == "100-continue":
        # We are ready for the body now that a token is in hand.
        await request.writer.write(_CONTINUE)
    body = RequestBody(request.content, length, cfg.replay_limit) if has_body else None
    if body is not None and cfg.max_body is not None and length is None:
        try:
            await body.buffer_up_to(cfg.max_body)
        except BodyTooLarge:
            return error_response(
                413, "body_too_large",
                f"chunked request body exceeds max_body {cfg.max_body}", upstream=name,
            )

    url = URL(cfg.target + path_qs, encoded=True)
    replayed = False
    try:
        resp = await _send(request, upstream, url, token, body, first=True)
        if resp.status == 401:
            retry = await _fresh_token_for_replay(upstream, token, body)
            if retry is not None:
                resp.close()
                replayed = True
                resp = await _send(request, upstream, url, retry, body, first=False)
    except UpstreamFailure as exc:
        log.warning("upstream_failed", upstream=name, reason=exc.reason)
        return error_response(exc.status, exc.error, exc.reason, upstream=name)
    except NoToken as exc:
        return error_response(
            503, "no_token", exc.reason, upstream=name, retry_after=exc.retry_after
        )

    try:
        return await _stream_back(request, resp, name)
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


async def _send(
    request: web.BaseRequest,
    upstream: UpstreamRuntime,
    url: URL,
    token: Token,
    body: RequestBody | None,
    *,
    first: bool,
) -> aiohttp.ClientResponse:
    data = None if body is None else (body.stream() if first else body.replay())
    headers = upstream_headers(request.headers, token.value)
    return await upstream.client.send(request.method, url, headers, data)


async def _fresh_token_for_replay(
    upstream: UpstreamRuntime, used: Token, body: RequestBody | None
) -> Token | None:
    """After a 401: drop the token (if still current) and get another, if a replay can work."""
    upstream.tokens.invalidate(used)
    if body is not None and not body.replayable:
        log.info("replay_impossible", upstream=upstream.name, reason="body over replay_limit")
        return None
    fresh = await upstream.tokens.get()
    if fresh.value == used.value:
        return None  # nothing new to try: the app gets the upstream's 401
    return fresh


async def _stream_back(
    request: web.BaseRequest, resp: aiohttp.ClientResponse, name: str
) -> web.StreamResponse:
    out = web.StreamResponse(status=resp.status, reason=resp.reason)
    out.headers.extend(downstream_headers(resp.headers))
    await out.prepare(request)
    try:
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
