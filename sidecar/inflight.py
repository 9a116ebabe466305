"""A count of work in progress that can be awaited until it falls to zero: requests on a
listener (graceful stop) or on an upstream (a reload retires it once idle)."""

from __future__ import annotations

import asyncio


class InFlight:
    __slots__ = ("__weakref__", "_idle", "count")

    def __init__(self) -> None:
        self.count = 0
        self._idle: asyncio.Future[None] | None = None

    def enter(self) -> None:
        self.count += 1

    def leave(self) -> None:
        self.count -= 1
        if not self.count and self._idle is not None and not self._idle.done():
            self._idle.set_result(None)

    async def wait_idle(self, seconds: float) -> bool:
        """Until nothing is in progress (True), or ``seconds`` passed first (False)."""
        if not self.count:
            return True
        if self._idle is None or self._idle.done():
            self._idle = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(asyncio.shield(self._idle), seconds)
        except TimeoutError:
            return False
        return True
