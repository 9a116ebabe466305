"""The rate limiter: arrival order, the configured rate, max_wait refusals, pauses."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from sidecar.config.models import RateLimit
from sidecar.http1.retry_after import retry_after_or_default
from sidecar.proxy.ratelimit import RateLimited, RateLimiter


async def test_requests_leave_in_arrival_order_at_the_rate() -> None:
    limiter = RateLimiter(RateLimit(rps=10, burst=1, max_wait=5))
    left: list[tuple[int, float]] = []
    start = time.monotonic()

    async def one(i: int) -> None:
        await limiter.acquire()
        left.append((i, time.monotonic() - start))

    await asyncio.gather(*(one(i) for i in range(8)))
    assert [i for i, _ in left] == list(range(8))
    gaps = [b - a for (_, a), (_, b) in itertools.pairwise(left)]
    assert all(gap >= 0.095 for gap in gaps), gaps
    assert left[-1][1] < 0.9
    await limiter.close()


async def test_burst_goes_at_once_then_the_rate() -> None:
    limiter = RateLimiter(RateLimit(rps=5, burst=3, max_wait=5))
    start = time.monotonic()
    times = await asyncio.gather(*(limiter.acquire() for _ in range(5)))
    assert sorted(times)[:3] == [0.0, 0.0, 0.0]
    assert 0.3 < time.monotonic() - start < 0.7
    await limiter.close()


async def test_late_requests_are_refused_with_a_retry_after() -> None:
    limiter = RateLimiter(RateLimit(rps=1, burst=1, max_wait=2))
    results = await asyncio.gather(*(limiter.acquire() for _ in range(6)), return_exceptions=True)
    waited = [r for r in results if isinstance(r, float)]
    refused = [r for r in results if isinstance(r, RateLimited)]
    # Waits of 0 s and ~1.02 s (1/rps plus the jitter margin) fit; ~2.04 s does not.
    assert len(waited) == 2 and len(refused) == 4
    assert all(r.retry_after > 2 for r in refused)
    await limiter.close()


async def test_pause_holds_the_queue() -> None:
    limiter = RateLimiter(RateLimit(rps=100, burst=1, max_wait=5))
    await limiter.acquire()
    limiter.pause(0.5)
    start = time.monotonic()
    await limiter.acquire()
    assert time.monotonic() - start >= 0.45
    assert limiter.paused_for == 0
    await limiter.close()


def test_retry_after_forms() -> None:
    assert retry_after_or_default("7", 30) == 7
    assert retry_after_or_default(None, 30) == 30
    assert retry_after_or_default("Wed, 21 Oct 2015 07:28:00 GMT", 30) == 0
    assert retry_after_or_default("soon", 30) == 30


@pytest.mark.parametrize("rps", [0, -1])
def test_rate_must_be_positive(rps: float) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        RateLimit(rps=rps)


async def test_a_long_pause_refuses_queued_requests_instead_of_hanging() -> None:
    limiter = RateLimiter(RateLimit(rps=1, burst=1, max_wait=2))
    await limiter.acquire()
    queued = asyncio.create_task(limiter.acquire())  # ~1 s wait: within max_wait
    await asyncio.sleep(0.1)
    limiter.pause(3600)  # the upstream says: come back in an hour
    with pytest.raises(RateLimited) as caught:
        await asyncio.wait_for(queued, 1)
    assert caught.value.retry_after > 3000
    await limiter.close()
