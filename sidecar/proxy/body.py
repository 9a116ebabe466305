"""The app's request body on its way up: streamed, with a bounded copy kept for one replay.

Nothing here reads a whole body, except :meth:`RequestBody.buffer_up_to` for the documented
``max_body`` limit on chunked uploads (a length must be known before anything is sent).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Protocol


class BodyTooLarge(Exception):
    pass


class ReplayBudget:
    """The bytes all request bodies keep for replays together, against one limit, so many
    large uploads at once cannot hold more memory than that (``replay_budget``)."""

    __slots__ = ("exceeded", "limit", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.exceeded = 0  # bodies that went unkept because the budget was spent

    def take(self, size: int, *, force: bool = False) -> bool:
        """Count ``size`` more kept bytes; False (nothing counted) past the limit, unless
        ``force``: a chunked body under ``max_body`` must be held whole to learn its length."""
        if self.used + size > self.limit and not force:
            return False
        self.used += size
        return True

    def give_back(self, size: int) -> None:
        self.used -= size


class BodySource(Protocol):
    async def readany(self) -> bytes: ...


class RequestBody:
    def __init__(
        self, stream: BodySource, length: int | None, keep_limit: int, budget: ReplayBudget
    ) -> None:
        self._stream = stream
        self._keep_limit = keep_limit
        self._budget = budget
        self.over_budget = False  # the budget was spent: forwarded, not replayable
        self._buffering = False
        # A copy is kept only while the body may still fit: a known larger length keeps nothing.
        fits = keep_limit > 0 and (length is None or length <= keep_limit)
        self._kept: list[bytes] | None = [] if fits else None
        self._kept_size = 0
        self._generation = 0
        self._not_reading = asyncio.Event()
        self._not_reading.set()
        self.bytes_read = 0

    @property
    def replayable(self) -> bool:
        """True while every byte read so far is kept (the rest can still be streamed)."""
        return self._kept is not None

    async def buffer_up_to(self, limit: int) -> None:
        """Read the whole body into the kept copy, refusing it past ``limit`` bytes."""
        self._kept, self._keep_limit = [], max(self._keep_limit, limit)
        self._buffering = True
        async for _ in self._read_app(self._generation):
            if self.bytes_read > limit:
                raise BodyTooLarge
        if self.bytes_read > limit:
            raise BodyTooLarge

    def stream(self) -> AsyncIterator[bytes]:
        """The first send: kept bytes (if buffered) then the rest of the app's stream."""
        return self._from_start()

    async def freeze(self) -> None:
        """Stop the first send from reading more of the app's body (its upstream has already
        answered), so that ``replayable`` is final and the replay starts from a known state."""
        self._generation += 1  # the first send's iterator stops at its next step
        await self._not_reading.wait()

    def replay(self) -> AsyncIterator[bytes]:
        """A second send after a 401: the kept bytes, then whatever the app has not sent yet.

        Call :meth:`freeze` first; a body that was not kept whole cannot be replayed."""
        if self._kept is None:
            raise RuntimeError("body was not kept whole: it cannot be replayed")
        return self._from_start()

    async def _from_start(self) -> AsyncIterator[bytes]:
        generation = self._generation
        await self._not_reading.wait()
        if self._kept:
            for chunk in list(self._kept):
                yield chunk
        async for chunk in self._read_app(generation):
            yield chunk

    async def _read_app(self, generation: int) -> AsyncIterator[bytes]:
        while generation == self._generation:
            self._not_reading.clear()
            try:
                chunk = await self._stream.readany()
            finally:
                self._not_reading.set()
            if not chunk:
                return
            self.bytes_read += len(chunk)
            if self._kept is not None:
                if self._kept_size + len(chunk) > self._keep_limit:
                    self._drop_kept()  # too large to replay: stop holding memory for it
                elif not self._budget.take(len(chunk), force=self._buffering):
                    self._drop_kept()
                    self.over_budget = True
                    self._budget.exceeded += 1
                else:
                    self._kept.append(chunk)
                    self._kept_size += len(chunk)
            yield chunk

    def _drop_kept(self) -> None:
        self._kept = None
        self._budget.give_back(self._kept_size)
        self._kept_size = 0

    def release(self) -> None:
        """The exchange is over: what was kept goes back to the budget."""
        if self._kept is not None:
            self._drop_kept()
