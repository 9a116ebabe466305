"""The app's request body on its way up: streamed, with a bounded copy kept for one replay.

Nothing here reads a whole body, except :meth:`RequestBody.buffer_up_to` for the documented
``max_body`` limit on chunked uploads (a length must be known before anything is sent).
"""

from __future__ import annotations

import asyncio
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
    """The app's body as its connection queues it (:class:`sidecar.http1.wire.BodyQueue`)."""

    def read_nowait(self) -> bytes | None: ...
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
        while await self._read_app():
            if self.bytes_read > limit:
                raise BodyTooLarge

    def stream(self) -> BodyStream:
        """The first send: kept bytes (if buffered) then the rest of the app's stream."""
        return BodyStream(self)

    async def freeze(self) -> None:
        """Stop the first send from reading more of the app's body (its upstream has already
        answered), so that ``replayable`` is final and the replay starts from a known state."""
        self._generation += 1  # the first send's iterator stops at its next step
        await self._not_reading.wait()

    def replay(self) -> BodyStream:
        """A second send after a 401: the kept bytes, then whatever the app has not sent yet.

        Call :meth:`freeze` first; a body that was not kept whole cannot be replayed."""
        if self._kept is None:
            raise RuntimeError("body was not kept whole: it cannot be replayed")
        return BodyStream(self)

    async def _read_app(self) -> bytes:
        """The app's next piece, waited for (b"" at the end), counted and kept."""
        self._not_reading.clear()
        try:
            chunk = await self._stream.readany()
        finally:
            self._not_reading.set()
        if chunk:
            self._took(chunk)
        return chunk

    def _took(self, chunk: bytes) -> None:
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

    def _drop_kept(self) -> None:
        self._kept = None
        self._budget.give_back(self._kept_size)
        self._kept_size = 0

    def release(self) -> None:
        """The exchange is over: what was kept goes back to the budget."""
        if self._kept is not None:
            self._drop_kept()


class BodyStream:
    """One send's pass over a :class:`RequestBody`: the kept copy, then what the app has not
    sent yet. An async iterator, and :meth:`take_nowait` for what is here already: the
    upstream connection writes the request head with it, in one write and without a task
    switch, and streams the rest. A :meth:`RequestBody.freeze` ends the pass."""

    __slots__ = ("_body", "_from_app", "_generation", "_next_kept")

    def __init__(self, body: RequestBody) -> None:
        self._body = body
        self._generation = body._generation
        self._next_kept = 0  # index of the next kept piece to send
        self._from_app = False  # the kept pieces are behind: reading the app's stream

    def __aiter__(self) -> BodyStream:
        return self

    def take_nowait(self) -> bytes | None:
        """The next piece (b"" at the end) if it needs no wait, else None."""
        body = self._body
        if self._generation != body._generation:
            return b""  # frozen: this send's upstream has answered already
        if not body._not_reading.is_set():
            return None  # another pass is reading the app's stream: its piece comes first
        if not self._from_app:
            kept = body._kept
            if kept is not None and self._next_kept < len(kept):
                self._next_kept += 1
                return kept[self._next_kept - 1]
            self._from_app = True  # from here on, the app's pieces are kept as they pass
        chunk = body._stream.read_nowait()
        if chunk:
            body._took(chunk)
        return chunk

    async def __anext__(self) -> bytes:
        chunk = self.take_nowait()
        if chunk is None:
            await self._body._not_reading.wait()
            chunk = self.take_nowait()
            if chunk is None:
                chunk = await self._body._read_app()
        if not chunk:
            raise StopAsyncIteration
        return chunk
