"""The 429 policy: the API says "too many". Its ``Retry-After`` pauses this upstream's queue;
an idempotent request is retried once when the upstream allows it (``retry_on_429``) and the
wait fits its limit."""

from __future__ import annotations

import asyncio

import structlog

from sidecar.http1.retry_after import DEFAULT_RETRY_AFTER, retry_after_or_default
from sidecar.proxy.exchange import Exchange
from sidecar.proxy.ratelimit import RateLimited
from sidecar.proxy.upstream_client import IDEMPOTENT, UpstreamFailure

log = structlog.get_logger("sidecar.proxy")


async def after_429(ex: Exchange, inspected: bytes) -> bool:
    """Pause the queue; retry once when configured and safe. True when it retried (the
    exchange then holds the new answer)."""
    resp = ex.response
    assert resp is not None
    upstream, cfg = ex.upstream, ex.upstream.config
    limiter = upstream.limiter
    default = cfg.rate_limit.default_retry_after if cfg.rate_limit else DEFAULT_RETRY_AFTER
    delay = retry_after_or_default(resp.headers.get("Retry-After"), default)
    if limiter is not None:
        limiter.pause(delay)
    log.info("upstream_429", upstream=upstream.name, retry_after=delay, request_id=ex.request_id)
    limit = cfg.rate_limit.max_wait if cfg.rate_limit else cfg.timeouts.read
    if not cfg.retry_on_429 or ex.request.method not in IDEMPOTENT or delay > limit or inspected:
        return False
    if ex.body is not None:
        await ex.body.freeze()
        if not ex.body.replayable:
            return False
    if limiter is not None and limiter.expected_wait() > limit:
        return False
    resp.close()  # not passed on: its connection need not wait for the retry
    if limiter is not None:
        try:
            ex.queued += await limiter.acquire()
        except RateLimited as exc:
            ex.queued += exc.waited
            raise UpstreamFailure(
                429, "rate_limited", f"{upstream.name} is rate limited; retry after {delay:g} s"
            ) from exc
    else:
        await asyncio.sleep(delay)
    ex.retried_429 = True
    retried = await ex.send(await upstream.tokens.get(), first=False)
    if retried.status == 429 and limiter is not None:
        limiter.pause(retry_after_or_default(retried.headers.get("Retry-After"), default))
    return True
