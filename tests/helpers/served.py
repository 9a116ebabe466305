"""An HTTP/1.1 server whose connections are driven over recording transports: its handler
records each request and answers as a test says (by default, the path and the body)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from multidict import CIMultiDict

from sidecar.http1.request import ServerRequest
from sidecar.http1.server import HttpServer
from sidecar.http1.server_connection import ServerConnection
from tests.helpers.transport import MockTransport

Handler = Callable[[ServerRequest], Awaitable[None]]


class Served:
    """A server whose handler records each request and answers through ``answer``."""

    def __init__(
        self, answer: Handler | None = None, idle_timeout: float = 75.0,
        max_connections: int = 1024,
    ) -> None:
        self.requests: list[ServerRequest] = []
        self.bodies: list[bytes] = []
        self.malformed: list[str] = []
        self.shed = 0
        self._answer = answer or self.echo
        self.server = HttpServer(self.handle, idle_timeout, self.malformed.append,
                                 max_connections, self._count_shed)

    def _count_shed(self) -> None:
        self.shed += 1

    async def handle(self, request: ServerRequest) -> None:
        self.requests.append(request)
        await self._answer(request)

    async def echo(self, request: ServerRequest) -> None:
        """Reads the body, answers with the path and the body."""
        body = b""
        while data := await request.content.readany():
            body += data
        self.bodies.append(body)
        await request.respond(200, CIMultiDict(), request.raw_path.encode() + b":" + body)

    def connect(self) -> tuple[ServerConnection, MockTransport]:
        conn = self.server()
        transport = MockTransport(conn)
        conn.connection_made(transport)
        return conn, transport
