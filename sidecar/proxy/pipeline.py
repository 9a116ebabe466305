"""One proxied request, in order: local checks → token → send (body streamed) → token
rejected? new token once and replay → stream the answer back. Then one access-log line.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable

import structlog
from multidict import CIMultiDict

from sidecar.auth.base import NoToken, Token
from sidecar.http1.client import UpstreamResponse
from sidecar.http1.server import AppRequest, ClientGone
from sidecar.logs import access_log
from sidecar.proxy.body import BodyTooLarge, RequestBody
from sidecar.proxy.errors import LocalAnswer, error_response
from sidecar.proxy.forward import IDEMPOTENT, UpstreamFailure
from sidecar.proxy.headers import downstream_headers, upstream_headers
from sidecar.proxy.ratelimit import RateLimited, retry_after_seconds
from sidecar.proxy.upstream import UpstreamRuntime

log = structlog.get_logger("sidecar.proxy")

INSPECT_LIMIT = 64 * 1024  # the most of an error body read to learn why the API refused
REQUEST_ID = "X-Request-ID"
_REQUEST_ID_RAW = b"x-request-id"


def _new_request_id() -> str:
    # Unique, not secret: Mersenne Twister is enough, and it costs no system call (uuid4
    # reads the kernel's random source on every request).
    return f"{random.getrandbits(128):032x}"


class Exchange:
    """What one request picked up on its way through, for the access line and metrics.

    A plain class with slots: one is made per request."""

    __slots__ = (
        "body", "broken", "bytes_out", "gone", "path_qs", "queued", "refused", "replayed",
        "request", "request_id", "retried_429", "started", "upstream",
    )

    def __init__(
        self, request: AppRequest, upstream: UpstreamRuntime, path_qs: str, request_id: str
    ) -> None:
        self.request = request
        self.upstream = upstream
        self.path_qs = path_qs
        self.request_id = request_id
        self.started = time.monotonic()
        self.body: RequestBody | None = None
        self.replayed = False
        self.bytes_out = 0
        self.refused: str | None = None  # the sidecar's own error code, when it answered
        self.queued = 0.0  # seconds spent in the rate limiter's queue
        self.retried_429 = False
        self.broken = False  # the upstream broke off mid-body; the app's connection was cut
        self.gone = False  # the app hung up before its answer was out


async def forward(request: AppRequest, upstream: UpstreamRuntime, path_qs: str) -> None:
    request_id = request.headers.get(REQUEST_ID) or _new_request_id()
    ex = Exchange(request, upstream, path_qs, request_id)
    upstream.metrics.inflight_count += 1
    upstream.inflight += 1
    try:
        answer = await _exchange(ex)
        if answer is not None:
            answer.headers[REQUEST_ID] = ex.request_id
            await answer.send(request)
    except (ClientGone, asyncio.CancelledError):
        ex.gone = True
        raise
    finally:
        upstream.inflight -= 1
        upstream.metrics.inflight_count -= 1
        _account(ex)


async def _exchange(ex: Exchange) -> LocalAnswer | None:
    request, upstream = ex.request, ex.upstream
    cfg = upstream.config
    length = request.content_length

    refusal = _local_checks(ex, length)
    if refusal is not None:
        return refusal
    # Nearly every request finds a valid token and no rate limit: no suspension then.
    token = upstream.tokens.peek() if upstream.limiter is None else None
    if token is None:
        try:
            token = await _token_and_slot(ex)
        except NoToken as exc:
            return _no_token(ex, exc)
        except RateLimited as exc:
            return _rate_limited(ex, exc)

    if request.headers.get("Expect", "").lower() == "100-continue":
        # We are ready for the body now that a token is in hand.
        await request.send_continue()
    if request.body_exists:
        ex.body = RequestBody(request.content, length, cfg.replay_limit)
        if cfg.max_body is not None and length is None:
            try:
                await ex.body.buffer_up_to(cfg.max_body)
            except BodyTooLarge:
                return _refuse(
                    ex, 413, "body_too_large",
                    f"chunked request body exceeds max_body {cfg.max_body}",
                )
            try:  # a slow upload may have outlived the token: check it again
                token = await upstream.tokens.get()
            except NoToken as exc:
                return _no_token(ex, exc)

    url = cfg.target + ex.path_qs
    headers = upstream_headers(request.headers, cfg.headers, cfg.header_date)
    headers[REQUEST_ID] = ex.request_id
    inspected = b""
    try:
        resp = await _send(ex, url, headers, token, first=True)
        if resp.status == 401 or resp.status in upstream.rejection.inspect_statuses:
            try:
                inspected = await _inspect(resp, upstream)
                retry = await _token_for_replay(ex, resp.status, inspected, token)
            except BaseException:
                upstream.client.release(resp, discard=True)
                raise
            if retry is not None:
                upstream.client.release(resp, discard=True)
                ex.replayed, inspected = True, b""
                upstream.metrics.replays.inc()
                if upstream.limiter is not None:  # a replay is a send like any other
                    ex.queued += await upstream.limiter.acquire()
                resp = await _send(ex, url, headers, retry, first=False)
        if resp.status == 429:
            resp = await _after_429(ex, resp, url, headers, inspected)
            if ex.retried_429:
                inspected = b""
    except UpstreamFailure as exc:
        log.warning("upstream_failed", upstream=upstream.name, reason=exc.reason,
                    request_id=ex.request_id)
        return _refuse(ex, exc.status, exc.error, exc.reason)
    except NoToken as exc:
        return _no_token(ex, exc)
    except RateLimited as exc:
        return _rate_limited(ex, exc)

    finished = False
    try:
        await _stream_back(ex, resp, inspected)
        finished = not ex.broken
        return None
    finally:
        # An app that went away mid-download leaves the upstream's answer half read: that
        # connection cannot go back into the pool.
        upstream.client.release(resp, discard=not finished)


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


def _rate_limited(ex: Exchange, exc: RateLimited) -> LocalAnswer:
    limiter = ex.upstream.limiter
    assert limiter is not None
    return _refuse(
        ex, 429, "rate_limited",
        f"{ex.upstream.name} allows {limiter.cfg.rps:g} request(s)/s; this one would wait "
        f"{exc.retry_after:.1f} s, over max_wait {limiter.cfg.max_wait:g} s",
        retry_after=exc.retry_after,
    )


def _local_checks(ex: Exchange, length: int | None) -> LocalAnswer | None:
    """What the sidecar refuses itself, before a token is fetched or a byte is sent."""
    request, cfg = ex.request, ex.upstream.config
    missing = None
    if cfg.require_headers:
        required = cfg.require_headers.get(request.method, []) + cfg.require_headers.get("*", [])
        missing = [h for h in required if h not in request.headers]
    if missing:
        return _refuse(
            ex, 400, "missing_header",
            f"{request.method} to {ex.upstream.name} requires header(s): {', '.join(missing)}",
        )
    if cfg.max_body is not None and length is not None and length > cfg.max_body:
        return _refuse(
            ex, 413, "body_too_large",
            f"request body of {length} bytes exceeds max_body {cfg.max_body}",
        )
    return None


def _refuse(
    ex: Exchange, status: int, error: str, message: str, retry_after: float | None = None
) -> LocalAnswer:
    ex.refused = error
    return error_response(
        status, error, message, upstream=ex.upstream.name, retry_after=retry_after
    )


def _no_token(ex: Exchange, exc: NoToken) -> LocalAnswer:
    return _refuse(ex, 503, "no_token", exc.reason, retry_after=exc.retry_after)


def _send(
    ex: Exchange, url: str, headers: CIMultiDict[str], token: Token, *, first: bool
) -> Awaitable[UpstreamResponse]:
    """The upstream call with this token (an awaitable: no coroutine of its own)."""
    body = ex.body
    data = None if body is None else (body.stream() if first else body.replay())
    headers["Authorization"] = f"Bearer {token.value}"
    length = ex.request.content_length
    if length is not None:  # framing from what llhttp parsed (the app's header was dropped)
        headers["Content-Length"] = str(length)
    chunked = data is not None and length is None
    return ex.upstream.client.send(ex.request.method, url, headers, data, chunked)


async def _after_429(
    ex: Exchange,
    resp: UpstreamResponse,
    url: str,
    headers: CIMultiDict[str],
    inspected: bytes,
) -> UpstreamResponse:
    """The upstream says "too many": pause its queue; retry once when configured and safe."""
    upstream, cfg = ex.upstream, ex.upstream.config
    limiter = upstream.limiter
    default = cfg.rate_limit.default_retry_after if cfg.rate_limit else 30.0
    delay = retry_after_seconds(resp.headers.get("Retry-After"), default)
    if limiter is not None:
        limiter.pause(delay)
    log.info("upstream_429", upstream=upstream.name, retry_after=delay, request_id=ex.request_id)
    limit = cfg.rate_limit.max_wait if cfg.rate_limit else cfg.timeouts.read
    if not cfg.retry_on_429 or ex.request.method not in IDEMPOTENT or delay > limit or inspected:
        return resp
    if ex.body is not None:
        try:
            await ex.body.freeze()
        except BaseException:
            upstream.client.release(resp, discard=True)  # the app went away meanwhile
            raise
        if not ex.body.replayable:
            return resp
    if limiter is not None and limiter.expected_wait() > limit:
        return resp
    upstream.client.release(resp, discard=True)
    if limiter is not None:
        try:
            ex.queued += await limiter.acquire()
        except RateLimited as exc:
            raise UpstreamFailure(
                429, "rate_limited", f"{upstream.name} is rate limited; retry after {delay:g} s"
            ) from exc
    else:
        await asyncio.sleep(delay)
    ex.retried_429 = True
    token = await upstream.tokens.get()
    retried = await _send(ex, url, headers, token, first=False)
    if retried.status == 429 and limiter is not None:
        limiter.pause(retry_after_seconds(retried.headers.get("Retry-After"), default))
    return retried


async def _inspect(resp: UpstreamResponse, upstream: UpstreamRuntime) -> bytes:
    """Read the start of an error answer whose body tells whether the token was refused."""
    if resp.status not in upstream.rejection.inspect_statuses:
        return b""
    chunks: list[bytes] = []
    size = 0
    try:
        while size < INSPECT_LIMIT:
            chunk = await resp.read(INSPECT_LIMIT - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except (ConnectionError, TimeoutError) as exc:
        raise UpstreamFailure(
            502, "upstream_error", f"{upstream.name} broke off its {resp.status} answer"
        ) from exc
    return b"".join(chunks)


async def _token_for_replay(
    ex: Exchange, status: int, inspected: bytes, used: Token
) -> Token | None:
    """A fresh token when the answer says ours is dead and a replay can work; else None.

    The dead token is dropped only if it is still the current one."""
    upstream = ex.upstream
    rejected, code = upstream.rejection.token_rejected(status, inspected)
    if code is not None:
        log.info("upstream_fault", upstream=upstream.name, status=status, code=code,
                 token_rejected=rejected, request_id=ex.request_id)
    if not rejected:
        return None
    upstream.tokens.invalidate(used)
    body = ex.body
    if body is not None:
        await body.freeze()
    if body is not None and not body.replayable:
        log.info("replay_impossible", upstream=upstream.name, reason="body over replay_limit")
        return None
    fresh = await upstream.tokens.get()
    if fresh.value == used.value:
        return None  # nothing new to try: the app gets the upstream's answer
    return fresh


async def _stream_back(ex: Exchange, resp: UpstreamResponse, already_read: bytes) -> None:
    request = ex.request
    headers, names = downstream_headers(resp.raw_headers)
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
            if request.write_nowait(chunk):
                await request.drain()
            ex.bytes_out += len(chunk)
    except ClientGone:
        raise
    except (ConnectionError, TimeoutError) as exc:
        # The upstream broke off mid-body. Close the app's connection too, so it sees a broken
        # response rather than a short one that looks complete.
        log.warning("upstream_body_broken", upstream=ex.upstream.name,
                    reason=type(exc).__name__, request_id=ex.request_id)
        ex.broken = True
        request.abort()
        return
    request.finish()


def _account(ex: Exchange) -> None:
    """The access line and the request metrics, once per request, whatever happened."""
    status = 499 if ex.gone or ex.request.status is None else ex.request.status
    if ex.broken:
        status = 502  # what the app got was a cut connection, not the upstream's status
    seconds = time.monotonic() - ex.started
    bytes_in = ex.body.bytes_read if ex.body is not None else 0
    metrics = ex.upstream.metrics
    metrics.request_done(ex.request.method, status, seconds, bytes_in, ex.bytes_out)
    if ex.refused is not None and ex.refused.startswith(
        ("missing", "body", "no_token", "rate_limited")
    ):
        metrics.rejected(ex.refused)
    access_log.request(
        ex.request_id, ex.upstream.name, ex.request.method, ex.path_qs.split("?", 1)[0],
        status, seconds, bytes_in, ex.bytes_out, ex.replayed, ex.retried_429, ex.queued,
        ex.refused, ex.broken,
    )
