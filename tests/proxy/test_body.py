"""The app's request body on its way up (``sidecar.proxy.body``): streamed once, a copy kept
for one replay up to a limit, buffered whole only when asked, and frozen before a replay."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from sidecar.proxy.body import BodySource, BodyTooLarge, ReplayBudget, RequestBody


class Source:
    """The app's body as the connection hands it over: pieces, then b"" at the end.

    With ``hold`` set, each piece after the first waits for ``more`` (the end does not)."""

    def __init__(self, *pieces: bytes, hold: bool = False) -> None:
        self.pieces = list(pieces)
        self.reads = 0
        self.hold = hold
        self.more = asyncio.Event()

    def read_nowait(self) -> bytes | None:
        if self.hold and self.reads and self.pieces:
            return None  # the next piece waits for `more`
        self.reads += 1
        return self.pieces.pop(0) if self.pieces else b""

    async def readany(self) -> bytes:
        if self.hold and self.reads and self.pieces:
            await self.more.wait()
            self.more.clear()
        self.reads += 1
        return self.pieces.pop(0) if self.pieces else b""


def body_of(
    source: Source | BodySource, length: int | None, keep_limit: int,
    budget: ReplayBudget | None = None,
) -> RequestBody:
    return RequestBody(source, length, keep_limit, budget or ReplayBudget(1 << 20))


async def collect(stream: AsyncIterator[bytes]) -> list[bytes]:
    return [piece async for piece in stream]


async def test_a_body_within_the_limit_streams_and_replays_whole() -> None:
    body = body_of(Source(b"ab", b"cd", b"e"), 5, 5)
    assert body.replayable
    assert await collect(body.stream()) == [b"ab", b"cd", b"e"]
    assert body.bytes_read == 5
    await body.freeze()
    assert body.replayable
    assert await collect(body.replay()) == [b"ab", b"cd", b"e"]
    assert body.bytes_read == 5  # the replay read nothing more from the app


async def test_what_is_here_already_is_taken_without_a_wait_and_kept() -> None:
    source = Source(b"one", b"two", b"three", hold=True)
    body = body_of(source, None, 100)
    stream = body.stream()
    assert stream.take_nowait() == b"one"
    assert stream.take_nowait() is None  # the app's next piece is on its way
    source.more.set()
    assert await anext(stream) == b"two"
    await body.freeze()
    assert stream.take_nowait() == b""  # a frozen send is over
    replay = body.replay()
    assert [replay.take_nowait(), replay.take_nowait()] == [b"one", b"two"]  # the kept copy
    assert replay.take_nowait() is None
    source.more.set()
    assert await collect(replay) == [b"three"]
    assert body.bytes_read == len(b"onetwothree")


async def test_a_known_length_over_the_limit_keeps_nothing() -> None:
    body = body_of(Source(b"abcdef"), 6, 5)
    assert not body.replayable
    assert await collect(body.stream()) == [b"abcdef"]
    with pytest.raises(RuntimeError, match="cannot be replayed"):
        body.replay()


async def test_a_chunked_body_stops_being_kept_once_it_passes_the_limit() -> None:
    body = body_of(Source(b"abc", b"de", b"f"), None, 5)
    stream = body.stream()
    assert await anext(stream) == b"abc"
    assert await anext(stream) == b"de"
    assert body.replayable  # exactly at the limit
    assert await anext(stream) == b"f"
    assert not body.replayable  # streaming goes on; the copy was dropped
    assert await collect(stream) == []
    assert body.bytes_read == 6


async def test_no_copy_is_kept_with_a_zero_limit() -> None:
    body = body_of(Source(b"a"), None, 0)
    assert not body.replayable
    assert await collect(body.stream()) == [b"a"]


async def test_a_replay_after_a_partial_send_sends_the_kept_bytes_then_the_rest() -> None:
    """The upstream answered 401 before the whole body was sent: the replay starts from the
    first byte and goes on with what the app has not sent yet."""
    source = Source(b"one", b"two", b"three", hold=True)
    body = body_of(source, None, 100)
    first = body.stream()
    assert await anext(first) == b"one"
    sending = asyncio.create_task(anext(first))  # waits for the app's next piece
    await asyncio.sleep(0)
    freezing = asyncio.create_task(body.freeze())
    await asyncio.sleep(0)
    assert not freezing.done()  # a read of the app's stream is under way
    source.more.set()
    assert await sending == b"two"
    await asyncio.wait_for(freezing, 1)
    with pytest.raises(StopAsyncIteration):
        await anext(first)  # the first send stops: its upstream already answered
    replay = body.replay()
    assert await anext(replay) == b"one"
    assert await anext(replay) == b"two"
    source.more.set()
    assert await collect(replay) == [b"three"]
    assert body.bytes_read == len(b"onetwothree")


async def test_buffer_up_to_reads_the_whole_body_for_a_replay() -> None:
    body = body_of(Source(b"ab", b"cd"), None, 0)
    assert not body.replayable
    await body.buffer_up_to(10)
    assert body.replayable and body.bytes_read == 4
    assert await collect(body.stream()) == [b"ab", b"cd"]
    await body.freeze()
    assert await collect(body.replay()) == [b"ab", b"cd"]


async def test_buffer_up_to_refuses_a_body_past_its_limit() -> None:
    source = Source(b"abc", b"def", b"never read")
    body = body_of(source, None, 0)
    with pytest.raises(BodyTooLarge):
        await body.buffer_up_to(5)
    assert body.bytes_read == 6 and source.pieces == [b"never read"]


async def test_buffer_up_to_takes_a_body_exactly_at_its_limit() -> None:
    body = body_of(Source(b"abc", b"de"), None, 2)
    await body.buffer_up_to(5)
    assert body.replayable
    assert await collect(body.stream()) == [b"abc", b"de"]


async def test_a_broken_app_stream_reaches_the_sender() -> None:
    class Broken:
        def read_nowait(self) -> bytes | None:
            return None

        async def readany(self) -> bytes:
            raise ConnectionResetError("the app went away")

    body = body_of(Broken(), None, 10)
    with pytest.raises(ConnectionResetError):
        await collect(body.stream())
    await asyncio.wait_for(body.freeze(), 1)  # a failed read is not one still running


async def test_bodies_keep_copies_only_within_the_shared_budget() -> None:
    budget = ReplayBudget(limit=8)
    first = body_of(Source(b"abcde"), 5, 100, budget)
    second = body_of(Source(b"fghij"), 5, 100, budget)
    assert await collect(first.stream()) == [b"abcde"]
    assert first.replayable and budget.used == 5
    assert await collect(second.stream()) == [b"fghij"]  # streamed all the same
    assert not second.replayable and second.over_budget
    assert (budget.used, budget.exceeded) == (5, 1)
    first.release()  # its exchange is over: the bytes go back
    assert budget.used == 0
    third = body_of(Source(b"klmno"), 5, 100, budget)
    await collect(third.stream())
    assert third.replayable and budget.used == 5


async def test_a_copy_dropped_past_the_limit_gives_its_bytes_back() -> None:
    budget = ReplayBudget(limit=100)
    body = body_of(Source(b"abc", b"defgh"), None, 5, budget)
    await collect(body.stream())
    assert not body.replayable and not body.over_budget  # its own limit, not the budget
    assert budget.used == 0


async def test_buffering_for_max_body_may_go_past_the_budget() -> None:
    """A chunked body under max_body must be held whole to learn its length: the budget
    counts it but does not refuse it."""
    budget = ReplayBudget(limit=3)
    body = body_of(Source(b"abcd", b"ef"), None, 0, budget)
    await body.buffer_up_to(10)
    assert body.replayable and budget.used == 6
    body.release()
    assert budget.used == 0
