"""One proxied request, step by step: local checks → token (and rate-limit slot) → body →
send → token rejected? replay once (:mod:`.replay`) → 429? pause, perhaps retry
(:mod:`.too_many`) → stream the answer back. Then one access-log line (:mod:`.exchange`).
"""

from __future__ import annotations

import asyncio
import random

import structlog

from sidecar.auth.base import NoToken, Token
from sidecar.http1.answer import LocalAnswer
from sidecar.http1.errors import TransportError
from sidecar.http1.request import ClientGone, ServerRequest
from sidecar.proxy.body import BodyTooLarge, RequestBody
from sidecar.proxy.breaker import HALF_OPEN
from sidecar.proxy.exchange import Exchange
from sidecar.proxy.headers import downstream_headers, upstream_headers
from sidecar.proxy.ratelimit import RateLimited
from sidecar.proxy.replay import needs_look, replay_if_rejected
from sidecar.proxy.too_many import after_429
from sidecar.proxy.upstream import UpstreamRuntime
from sidecar.proxy.upstream_client import UpstreamFailure

log = structlog.get_logger("sidecar.proxy")

REQUEST_ID = "X-Request-ID"
_REQUEST_ID_RAW = b"x-request-id"


def _new_request_id() -> str:
    # Unique, not secret: Mersenne Twister is enough, and it costs no system call (uuid4
    # reads the kernel's random source on every request).
    return f"{random.getrandbits(128):032x}"


async def proxy_request(
    request: ServerRequest, upstream: UpstreamRuntime, path_qs: str, origin: str = ""
) -> None:
    """Serve one app request through ``upstream``; the answer goes out on ``request``.
    ``origin``: the one the app called (``Location`` values at the target go back to it)."""
    request_id = request.headers.get(REQUEST_ID) or _new_request_id()
    ex = Exchange(request, upstream, path_qs, request_id, origin)
    upstream.inflight.enter()
    try:
        answer = await _exchange(ex)
        if answer is not None:
            answer.headers[REQUEST_ID] = ex.request_id
            await answer.send(request)
    except (ClientGone, asyncio.CancelledError):
        ex.gone = True
        raise
    finally:
        ex.close()
        upstream.inflight.leave()
        ex.account()


async def _exchange(ex: Exchange) -> LocalAnswer | None:
    """The steps; a :class:`LocalAnswer` when the sidecar answers itself, else None (the
    upstream's answer was streamed back)."""
    request, upstream = ex.request, ex.upstream
    refusal = _local_checks(ex)
    if refusal is not None:
        return refusal
    if not upstream.breaker.clean:
        refusal = _breaker_check(ex)
        if refusal is not None:
            return refusal
    # Nearly every request finds a valid token and no rate limit: no suspension then.
    token = upstream.tokens.peek() if upstream.limiter is None else None
    try:
        if token is None:
            token = await _token_and_slot(ex)
        if request.headers.get("Expect", "").lower() == "100-continue":
            await request.send_continue()  # we are ready for the body now a token is in hand
        if request.body_exists:
            token = await _take_body(ex, token)
        ex.headers = upstream_headers(request.headers, upstream.config.headers,
                                      upstream.config.header_date, token.obtained_wall,
                                      upstream.config.set_headers)
        ex.headers[REQUEST_ID] = ex.request_id
        resp = await ex.send(token)
        inspected = b""
        if needs_look(ex, resp.status):
            inspected = await replay_if_rejected(ex, token)
        assert ex.response is not None
        if ex.response.status == 429 and await after_429(ex, inspected):
            inspected = b""
    except BodyTooLarge:
        return ex.refuse(413, "body_too_large",
                         f"chunked request body exceeds max_body {upstream.config.max_body}")
    except UpstreamFailure as exc:
        log.warning("upstream_failed", upstream=upstream.name, reason=exc.reason,
                    request_id=ex.request_id)
        return ex.refuse(exc.status, exc.error, exc.reason)
    except NoToken as exc:
        return ex.no_token(exc)
    except RateLimited as exc:
        return ex.rate_limited(exc)
    await _stream_back(ex, inspected)
    return None


def _local_checks(ex: Exchange) -> LocalAnswer | None:
    """What the sidecar refuses itself, before a token is fetched or a byte is sent."""
    request, cfg = ex.request, ex.upstream.config
    if cfg.require_headers:
        required = cfg.require_headers.get(request.method, []) + cfg.require_headers.get("*", [])
        missing = [h for h in required if h not in request.headers]
        if missing:
            return ex.refuse(
                400, "missing_header",
                f"{request.method} to {ex.upstream.name} requires header(s): {', '.join(missing)}",
            )
    length = request.content_length
    if cfg.max_body is not None and length is not None and length > cfg.max_body:
        return ex.refuse(
            413, "body_too_large",
            f"request body of {length} bytes exceeds max_body {cfg.max_body}",
        )
    return None


def _breaker_check(ex: Exchange) -> LocalAnswer | None:
    """The upstream has stayed silent lately: fail fast while its breaker is open, and let
    one request at a time probe it (before a token or the body is waited for)."""
    breaker = ex.upstream.breaker
    wait = breaker.admit()
    if wait is None:
        ex.probe = breaker.state == HALF_OPEN
        return None
    return ex.refuse(
        503, "upstream_unavailable",
        f"{ex.upstream.name} gave no answer to {breaker.failures} connection(s) in a row; "
        "requests fail fast until a probe gets through",
        retry_after=wait,
    )


async def _token_and_slot(ex: Exchange) -> Token:
    """A token, then a rate-limit slot (the limiter paces *sends*). When the token had to be
    waited for after the slot was granted (a login in between), the slot is spent and the
    request queues again: a slow login must not let the queue leave all at once."""
    upstream = ex.upstream
    token = await upstream.tokens.get()
    limiter = upstream.limiter
    if limiter is None:
        return token
    for _ in range(3):  # bounded: after that the request goes with the next token anyway
        ex.queued += await limiter.acquire()
        if upstream.tokens.ready:
            break
        await upstream.tokens.get()
    upstream.metrics.rate_limit_wait.observe(ex.queued)
    return await upstream.tokens.get()  # ready: returns at once


async def _take_body(ex: Exchange, token: Token) -> Token:
    """Stream the body up; a chunked one under ``max_body`` is buffered first to enforce it
    (then the token is checked again: a slow upload may have outlived it)."""
    request, cfg = ex.request, ex.upstream.config
    ex.body = RequestBody(request.content, request.content_length, cfg.replay_limit,
                          ex.upstream.replay_budget)
    if cfg.max_body is None or request.content_length is not None:
        return token
    await ex.body.buffer_up_to(cfg.max_body)
    return await ex.upstream.tokens.get()


async def _stream_back(ex: Exchange, already_read: bytes) -> None:
    request, resp = ex.request, ex.response
    assert resp is not None
    headers, names = downstream_headers(resp.raw_headers, ex.upstream.target_urls, ex.origin)
    if _REQUEST_ID_RAW not in names:
        headers.append((b"X-Request-ID", ex.request_id.encode("latin-1")))
    request.start_raw(resp.status, resp.reason, headers, b"content-length" in names)
    content = resp.content
    try:
        if already_read:
            await request.write(already_read)
            ex.bytes_out += len(already_read)
        while True:
            # A small answer is usually all here already: take it without a suspension.
            chunk = content.read_nowait()
            if chunk is None:
                chunk = await content.readany()
            if not chunk:
                break
            if content.at_eof:  # the last piece: it leaves with the answer's end, one write
                request.finish(chunk)
                ex.bytes_out += len(chunk)
                return
            if request.write_nowait(chunk):
                await request.drain()
            ex.bytes_out += len(chunk)
    except ClientGone:
        raise
    except (ConnectionError, TimeoutError, TransportError) as exc:
        # The upstream broke off mid-body. Close the app's connection too, so it sees a broken
        # response rather than a short one that looks complete.
        log.warning("upstream_body_broken", upstream=ex.upstream.name,
                    reason=type(exc).__name__, request_id=ex.request_id)
        ex.broken = True
        request.abort()
        return
    request.finish()
