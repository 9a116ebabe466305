"""Send slots of one account shared by replicas: a GCRA script in Redis hands each request the
time it may leave (``{prefix}:rl:{account hash}``), and an upstream's 429 pauses them all
(``...:pause``, announced on ``{prefix}:ev:pause:{account hash}``). A request sleeps until its
slot: nothing polls Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from sidecar.store.redis_store import RedisStore


class SharedSlots:
    def __init__(
        self,
        store: RedisStore,
        account: str,
        interval: float,
        burst: int,
        on_pause: Callable[[float], None],
    ) -> None:
        self._store = store
        self._tat = store.key("rl", account)
        self._pause = store.key("rl", account, "pause")
        self._channel = store.channel("pause", account)
        self._interval_ms = max(1, round(interval * 1000))
        self._burst = burst
        self._on_pause = on_pause
        # Reservations leave this process in arrival order: one script call at a time.
        self._order = asyncio.Lock()
        store.subscribe(self._channel, self._paused_elsewhere)

    @property
    def available(self) -> bool:
        return self._store.available

    async def reserve(self, max_wait: float) -> tuple[bool, float]:
        async with self._order:
            slot_ms, refused_ms = await self._store.run(
                "SLOT", [self._tat, self._pause],
                [self._interval_ms, self._burst, round(max_wait * 1000)],
            )
        if int(slot_ms) < 0:
            return False, int(refused_ms) / 1000
        return True, int(slot_ms) / 1000

    def pause(self, seconds: float) -> None:
        self._store.later(self._share_pause(seconds))

    async def _share_pause(self, seconds: float) -> None:
        try:
            await self._store.run(
                "PAUSE", [self._tat, self._pause, self._channel],
                [round(seconds * 1000), self._interval_ms, self._burst],
            )
        except Exception:  # StoreDown: the local pause holds this replica at least
            return

    def _paused_elsewhere(self, data: bytes) -> None:
        self._on_pause(int(data) / 1000)

    def close(self) -> None:
        self._store.unsubscribe(self._channel, self._paused_elsewhere)
