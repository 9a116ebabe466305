"""The token-rejected policy: when the API says the token we sent is dead, drop it (only if it
is still the current one), get a new one (at most one IdP call, however many requests saw the
rejection), and replay the request once if its body was kept.

A token that was itself fetched because of a rejection, less than ``replay.min_interval`` ago,
is not dropped when it is rejected too: the API refuses something a new token does not change
(a permission), and a login per 401 would only load the IdP. So 401s cost at most one login
per interval."""

from __future__ import annotations

import time

import structlog

from sidecar.auth.base import Token
from sidecar.http1.errors import TransportError
from sidecar.proxy.exchange import Exchange
from sidecar.proxy.headers import login_time_headers
from sidecar.proxy.upstream_client import UpstreamFailure

log = structlog.get_logger("sidecar.proxy")

INSPECT_LIMIT = 64 * 1024  # the most of an error body read to learn why the API refused


def needs_look(ex: Exchange, status: int) -> bool:
    """Whether this answer may say the token was rejected."""
    return status == 401 or status in ex.upstream.rejection.inspect_statuses


async def inspect(ex: Exchange) -> bytes:
    """Read the start of an error answer whose body tells whether the token was refused."""
    resp, upstream = ex.response, ex.upstream
    assert resp is not None
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
    except (ConnectionError, TimeoutError, TransportError) as exc:
        raise UpstreamFailure(
            502, "upstream_error", f"{upstream.name} broke off its {resp.status} answer"
        ) from exc
    return b"".join(chunks)


async def token_for_replay(
    ex: Exchange, status: int, inspected: bytes, used: Token
) -> Token | None:
    """A fresh token when the answer says ours is dead and a replay can work; else None."""
    upstream = ex.upstream
    rejected, code = upstream.rejection.token_rejected(status, inspected)
    if code is not None:
        log.info("upstream_fault", upstream=upstream.name, status=status, code=code,
                 token_rejected=rejected, request_id=ex.request_id)
    if not rejected:
        return None
    if used.after_rejection:
        age = time.monotonic() - used.obtained_at
        if age < upstream.config.replay.min_interval:
            log.warning("token_rejected_again", upstream=upstream.name, status=status,
                        token_age_s=round(age, 1), request_id=ex.request_id)
            upstream.metrics.token_rejected_again.inc()
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


async def replay_if_rejected(ex: Exchange, token: Token) -> bytes:
    """After the first answer: replay with a new token when it says ours was rejected.
    Returns what was read of the answer that stands (to be passed on before the rest)."""
    resp = ex.response
    assert resp is not None
    inspected = await inspect(ex)
    fresh = await token_for_replay(ex, resp.status, inspected, token)
    if fresh is None:
        return inspected
    ex.replayed = True
    cfg = ex.upstream.config
    login_time_headers(ex.headers, ex.request.headers, cfg.headers, cfg.header_date,
                       fresh.obtained_wall)
    ex.upstream.metrics.replays.inc()
    if ex.upstream.limiter is not None:  # a replay is a send like any other
        ex.queued += await ex.upstream.limiter.acquire()
    await ex.send(fresh, first=False)
    return b""
