"""A transport that records what a protocol does to it, for driving ``asyncio.Protocol``
classes byte by byte without sockets (as uvicorn's tests drive its HTTP protocols), and a
stand-in for the server connection a request answers through."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from sidecar.http1.wire import WriteFlow

if TYPE_CHECKING:
    from sidecar.http1.request import ServerRequest, TunnelSink


class MockTransport(asyncio.Transport):
    """Records writes, pauses and closes.

    Given a ``protocol``, closing or aborting calls its ``connection_lost`` on the next loop
    iteration, as a real transport does."""

    def __init__(
        self, protocol: asyncio.BaseProtocol | None = None, extra: dict[str, Any] | None = None
    ) -> None:
        super().__init__(extra)
        self.written = bytearray()
        self.writes = 0  # write() calls: each is a system call on a real socket
        self.paused = False
        self.pauses = 0  # how many times reading was paused
        self.closed = False
        self.aborted = False
        self._protocol = protocol
        self._lost = False

    def write(self, data: Any) -> None:
        if self.closed:
            raise AssertionError("write after close")
        self.writes += 1
        self.written += data

    def take(self) -> bytes:
        """What was written since the last call."""
        out = bytes(self.written)
        self.written.clear()
        return out

    def pause_reading(self) -> None:
        self.paused = True
        self.pauses += 1

    def resume_reading(self) -> None:
        self.paused = False

    def is_reading(self) -> bool:
        return not self.paused

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self._lose()

    def abort(self) -> None:
        self.aborted = True
        self._lose()

    def _lose(self) -> None:
        self.closed = True
        if self._protocol is not None and not self._lost:
            self._lost = True
            asyncio.get_running_loop().call_soon(self._protocol.connection_lost, None)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return super().get_extra_info(name, default)


async def settle(rounds: int = 20) -> None:
    """Let tasks the protocol started run until they wait on something outside."""
    for _ in range(rounds):
        await asyncio.sleep(0)


class StubConnection:
    """What a ``ServerRequest`` uses of the connection it came on, with a recording
    transport: answers can be checked without a parser in front."""

    def __init__(self, transport: MockTransport | None = None) -> None:
        self.transport: asyncio.Transport | None = transport or MockTransport()
        self.flow = WriteFlow()
        self.closing = False
        self.has_pending = False
        self.pauses: list[bool] = []
        self.sinks: list[TunnelSink] = []

    def pause_for(self, request: ServerRequest, on: bool) -> None:
        self.pauses.append(on)

    def tunnel_to(self, sink: TunnelSink) -> asyncio.Transport:
        self.sinks.append(sink)
        assert self.transport is not None
        return self.transport

    @property
    def written(self) -> bytes:
        assert isinstance(self.transport, MockTransport)
        return self.transport.take()
