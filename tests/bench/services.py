"""The benchmark's helper process: the IdP, the token-checking upstream and the upload sink.

Run as ``python -m tests.bench.services --dir D``; it writes ``D/services.json`` with its
ports once everything listens, and stops on SIGTERM or SIGINT.

- **IdP:** the sandbox Keycloak emulator over TLS, with one confidential client for the
  client_credentials grant. Its ``/_sandbox/settings`` and ``/_sandbox/stats`` controls set
  the token lifetime and count the calls.
- **Checking upstream** (mTLS): 200 for a live token of this IdP, 401 otherwise. The
  token-churn rows go there, so an expired or missing token is an error the client sees.
  (The fast nginx upstream can only check a token's shape.)
- **Upload sink** (plain HTTP behind the nginx upstream): reads and discards request
  bodies, Content-Length or chunked, and answers ``received <n>``. nginx cannot count a
  body it discards, and it may answer before reading it all.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import socket
import ssl
import threading
from pathlib import Path

from aiohttp import web

from sidecar.sandbox.keycloak import KeycloakEmulator
from sidecar.sandbox.servers import TlsServer

__all__ = ["CLIENT_ID", "CLIENT_SECRET", "UploadSink", "main"]

CLIENT_ID = "bench-client"
CLIENT_SECRET = "bench-secret"  # a throw-away credential of the local emulator
_BUFFER = 1024 * 1024
_MAX_HEAD = 64 * 1024


class UploadSink:
    """A threaded HTTP/1.1 server that counts and drops request bodies."""

    def __init__(self) -> None:
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = int(self._listener.getsockname()[1])
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            reader = _Reader(conn)
            try:
                while True:
                    head = reader.read_head()
                    if head is None:
                        return
                    count = reader.drain_body(head)
                    body = f"received {count}\n".encode()
                    conn.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                        + f"Content-Length: {len(body)}\r\n\r\n".encode()
                        + body
                    )
            except (OSError, ValueError):
                return


class _Reader:
    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        self.buffer = bytearray()
        self.scratch = memoryview(bytearray(_BUFFER))

    def _fill(self) -> bool:
        n = self.conn.recv_into(self.scratch, _BUFFER)
        if n == 0:
            return False
        self.buffer += self.scratch[:n]
        return True

    def read_head(self) -> dict[str, str] | None:
        while b"\r\n\r\n" not in self.buffer:
            if len(self.buffer) > _MAX_HEAD:
                raise ValueError("request head too large")
            if not self._fill():
                return None
        end = self.buffer.index(b"\r\n\r\n")
        lines = self.buffer[:end].decode("latin-1").split("\r\n")
        del self.buffer[: end + 4]
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return headers

    def _line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            if not self._fill():
                raise ValueError("connection closed in a chunk header")
        end = self.buffer.index(b"\r\n")
        line = bytes(self.buffer[:end])
        del self.buffer[: end + 2]
        return line

    def _discard(self, size: int) -> None:
        taken = min(size, len(self.buffer))
        del self.buffer[:taken]
        size -= taken
        while size > 0:
            n = self.conn.recv_into(self.scratch, min(size, _BUFFER))
            if n == 0:
                raise ValueError("connection closed in a body")
            size -= n

    def drain_body(self, headers: dict[str, str]) -> int:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            total = 0
            while True:
                size = int(self._line().split(b";")[0].strip(), 16)
                if size == 0:
                    while self._line():  # trailers, then the empty line
                        pass
                    return total
                self._discard(size + 2)  # the chunk and its CRLF
                total += size
        size = int(headers.get("content-length", "0"))
        self._discard(size)
        return size


def _checking_app(idp: KeycloakEmulator) -> web.Application:
    async def handle(request: web.Request) -> web.Response:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not idp.is_access_token_valid(token.strip()):
            return web.Response(status=401, text="invalid or expired token\n")
        return web.Response(text="ok\n")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def _server_context(cert: Path, key: Path, ca: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    if ca is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cafile=ca)
    return ctx


async def _serve(args: argparse.Namespace) -> None:
    pki = Path(args.pki)
    idp = KeycloakEmulator(clients={CLIENT_ID: CLIENT_SECRET}, access_ttl=args.access_ttl)
    idp_server = TlsServer(idp.app, _server_context(pki / "idp.crt", pki / "idp.key"))
    check_server = TlsServer(
        _checking_app(idp),
        _server_context(pki / "api.crt", pki / "api.key", pki / "ca.crt"),
    )
    sink = UploadSink()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await idp_server.start()
    try:
        await check_server.start()
        sink.start()
        ports = {
            "idp": idp_server.port,
            "token_path": idp.token_path,
            "check": check_server.port,
            "sink": sink.port,
        }
        out = Path(args.dir) / "services.json"
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(ports))
        tmp.replace(out)
        await stop.wait()
    finally:
        sink.close()
        await check_server.stop()
        await idp_server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", required=True, help="where services.json goes")
    parser.add_argument("--pki", required=True, help="directory with ca, idp and api certs")
    parser.add_argument("--access-ttl", type=float, default=3600.0)
    args = parser.parse_args()
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
