"""Per-upstream rate limit: requests queue in arrival order and leave at most ``rps`` a second
(a token bucket of ``burst``). One that would wait longer than ``max_wait`` is refused at once
with 429 and a ``Retry-After``. An upstream 429 pauses the queue for the time it asks.

With a shared store the slots and pauses are the account's, across replicas (``share``);
while the store cannot answer, each replica paces alone as here.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable

from sidecar.config.models import RateLimit
from sidecar.http1.retry_after import clamp_retry_after
from sidecar.store.base import SharedLimit, StoreDown


class RateLimited(Exception):
    def __init__(self, retry_after: float, waited: float = 0.0) -> None:
        super().__init__(f"would wait {retry_after:.1f} s")
        self.retry_after = retry_after
        self.waited = waited  # seconds in the queue before the refusal (a pause's, see below)


# Releases are spaced wider than 1/rps: an upstream that counts arrivals must never see two
# inside one interval because of jitter between the release and the arrival (scheduling,
# TLS, a busy upstream). At least 2 %, and up to 50 ms where 5 % of the interval allows it:
# at 1 request/s a 20 ms margin was seen to be too thin under load.
JITTER_FLOOR = 0.02
JITTER_SECONDS = 0.05
JITTER_SHARE = 0.05


def spaced_rate(rps: float) -> float:
    """The release rate actually used for a configured ``rps``."""
    interval = 1.0 / rps
    margin = max(JITTER_FLOOR * interval, min(JITTER_SECONDS, JITTER_SHARE * interval))
    return 1.0 / (interval + margin)


class RateLimiter:
    def __init__(self, cfg: RateLimit, clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self._rate = spaced_rate(cfg.rps)
        self._clock = clock
        self._tokens = float(cfg.burst)
        self._updated = clock()
        self._paused_until = 0.0
        self._queue: deque[tuple[asyncio.Future[None], float]] = deque()  # (turn, queued at)
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self._shared: SharedLimit | None = None
        self._shared_waiting = 0
        self._pauses = 0  # pauses so far: a request that slept through one takes a new slot

    def share(self, slots: SharedLimit) -> None:
        self._shared = slots

    def shared_interval(self) -> float:
        """The spacing of send slots (burst aside), the same on every replica."""
        return 1.0 / self._rate

    @property
    def queue_length(self) -> int:
        return sum(1 for f, _ in self._queue if not f.done()) + self._shared_waiting

    def expected_wait(self) -> float:
        """How long a request arriving now would wait (an estimate, for the max_wait check)."""
        now = self._clock()
        self._refill(now)
        ahead = self.queue_length
        pause_left = max(0.0, self._paused_until - now)
        if pause_left:
            return pause_left + max(0.0, ahead + 1 - self._tokens) / self._rate
        return max(0.0, (ahead + 1 - self._tokens) / self._rate)

    async def acquire(self) -> float:
        """Wait for this request's turn; the seconds waited. Raises RateLimited past max_wait."""
        shared = self._shared
        if shared is not None and shared.available:
            with contextlib.suppress(StoreDown):  # the store is gone: pace alone
                return await self._acquire_shared(shared)
        now = self._clock()
        self._refill(now)
        if not self._queue and self._tokens >= 1 and now >= self._paused_until:
            self._tokens -= 1
            return 0.0
        wait = self.expected_wait()
        if wait > self.cfg.max_wait:
            raise RateLimited(wait)
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((turn, now))
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._release())
        await turn  # a cancelled waiter is skipped by the scheduler
        return self._clock() - now

    async def _acquire_shared(self, shared: SharedLimit) -> float:
        started = self._clock()
        self._shared_waiting += 1
        try:
            while True:
                budget = max(0.0, self.cfg.max_wait - (self._clock() - started))
                granted, wait = await shared.reserve(budget)
                if not granted:
                    raise RateLimited(wait)
                pauses = self._pauses
                if wait > 0:
                    await asyncio.sleep(wait)
                if self._pauses == pauses:
                    return self._clock() - started
                # A 429 came while this request slept: its slot may fall in the pause.
        finally:
            self._shared_waiting -= 1

    def pause(self, seconds: float) -> None:
        """The upstream said 429: nothing leaves before ``seconds`` from now (at most
        ``MAX_RETRY_AFTER``: no one answer stops an upstream for good)."""
        seconds = clamp_retry_after(seconds)
        if self._shared is not None:
            self._shared.pause(seconds)
        self.pause_here(seconds)

    def pause_here(self, seconds: float) -> None:
        """A pause in this replica only (another replica's 429, learned from the store)."""
        now = self._clock()
        if self._shared is not None and now + seconds <= self._paused_until + 0.05:
            return  # our own pause, back from the store
        self._pauses += 1
        self._refill(now)
        self._paused_until = max(self._paused_until, now + seconds)
        # Tokens do not accrue while paused: one request may go when it ends, then the rate.
        self._tokens = min(self._tokens, 1.0)
        # Requests already queued were promised at most max_wait: those the pause would keep
        # longer get their 429 now instead of hanging.
        kept: deque[tuple[asyncio.Future[None], float]] = deque()
        position = 0
        for turn, queued_at in self._queue:
            if turn.done():
                continue
            leaves_at = self._paused_until + max(0.0, position + 1 - self._tokens) / self._rate
            if leaves_at - queued_at > self.cfg.max_wait:
                turn.set_exception(RateLimited(leaves_at - now, waited=now - queued_at))
            else:
                kept.append((turn, queued_at))
                position += 1
        self._queue = kept
        self._changed.set()

    @property
    def paused_for(self) -> float:
        return max(0.0, self._paused_until - self._clock())

    def _refill(self, now: float) -> None:
        elapsed = max(0.0, now - max(self._updated, self._paused_until))
        self._tokens = min(float(self.cfg.burst), self._tokens + elapsed * self._rate)
        self._updated = now

    async def _release(self) -> None:
        while self._queue:
            now = self._clock()
            self._refill(now)
            if now < self._paused_until:
                delay = self._paused_until - now
            elif self._tokens < 1:
                delay = (1 - self._tokens) / self._rate
            else:
                turn, _ = self._queue.popleft()
                if not turn.done():
                    self._tokens -= 1
                    turn.set_result(None)
                continue
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), delay)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for turn, _ in self._queue:
            turn.cancel()
        if self._shared is not None:
            self._shared.close()
