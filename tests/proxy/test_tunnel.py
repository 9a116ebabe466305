"""``CONNECT`` tunnels (``sidecar.proxy.tunnel``) to the hosts in ``passthrough``: bytes both
ways untouched, TLS end to end, EOF passed on in each direction, and JSON refusals when the
host is not listed or cannot be reached."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
from collections.abc import AsyncIterator

import pytest

from sidecar.sandbox.servers import SandboxStack
from tests.helpers.listener import bare_listener, one_answer
from tests.helpers.sidecars import SidecarFactory, proxy_url


async def _run(*args: str) -> subprocess.CompletedProcess[bytes]:
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    return subprocess.CompletedProcess(args, proc.returncode or 0, out, err)


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while chunk := await reader.read(65536):
        writer.write(chunk)
        await writer.drain()
    writer.close()


@pytest.fixture
async def echo_server() -> AsyncIterator[str]:
    """A plain TCP echo server; yields its host:port."""
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    try:
        yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()


async def _open_tunnel(
    proxy_port: int, target: str, early: bytes = b""
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy_port)
    writer.write(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode() + early)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head == b"HTTP/1.1 200 Connection Established\r\n\r\n"
    return reader, writer


async def test_bytes_go_both_ways_through_the_tunnel(echo_server: str) -> None:
    async with bare_listener(passthrough=[echo_server]) as proxy:
        reader, writer = await _open_tunnel(proxy.port, echo_server)
        for message in (b"ping", b"GET / HTTP/1.1\r\n\r\n", os.urandom(200_000)):
            writer.write(message)
            assert await asyncio.wait_for(reader.readexactly(len(message)), 5) == message
        writer.close()


async def test_bytes_sent_with_the_connect_head_are_not_lost(echo_server: str) -> None:
    """An app (or a TLS client in a hurry) may send its first bytes before the 200."""
    async with bare_listener(passthrough=[echo_server]) as proxy:
        reader, writer = await _open_tunnel(proxy.port, echo_server, early=b"early bytes")
        assert await asyncio.wait_for(reader.readexactly(11), 5) == b"early bytes"
        writer.close()


async def test_a_remote_that_closes_closes_the_app_side() -> None:
    async def greet_and_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"bye")
        await writer.drain()
        writer.close()

    remote = await asyncio.start_server(greet_and_close, "127.0.0.1", 0)
    target = f"127.0.0.1:{remote.sockets[0].getsockname()[1]}"
    try:
        async with bare_listener(passthrough=[target]) as proxy:
            reader, writer = await _open_tunnel(proxy.port, target)
            assert await asyncio.wait_for(reader.read(), 5) == b"bye"  # then EOF
            writer.close()
    finally:
        remote.close()


async def test_a_host_not_in_passthrough_is_refused(echo_server: str) -> None:
    host = echo_server.split(":")[0]
    async with bare_listener(passthrough=["github.com"]) as proxy:
        head, body = await one_answer(
            proxy.port, f"CONNECT {echo_server} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    assert head.startswith(b"HTTP/1.1 403 Forbidden\r\n")
    refusal = json.loads(body)
    assert refusal["error"] == "connect_refused" and echo_server in refusal["message"]


async def test_an_unreachable_passthrough_host_is_a_502() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        target = f"127.0.0.1:{probe.getsockname()[1]}"
    async with bare_listener(passthrough=[target]) as proxy:
        head, body = await one_answer(
            proxy.port, f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    assert head.startswith(b"HTTP/1.1 502 ")
    refusal = json.loads(body)
    assert refusal["error"] == "tunnel_unreachable" and target in refusal["message"]


async def test_passthrough_connect_tunnels_tls_untouched(
    sandbox: SandboxStack, make_sidecar: SidecarFactory
) -> None:
    api = sandbox.api_url.removeprefix("https://")
    sidecar = await make_sidecar(passthrough=[api])
    cert = sandbox.client_cert
    # curl speaks TLS (with its own client certificate) end to end through the tunnel; the
    # sidecar adds nothing, so the API answers 401 for the missing token.
    result = await _run(
        "curl", "-sS", "-p", "-x", proxy_url(sidecar), "--cacert", str(sandbox.pki.ca_file),
        "--cert", str(cert.cert_file), "--key", str(cert.key_file),
        "-w", "\n%{http_code}", f"https://{api}/ntb/tunnelled",
    )
    assert result.returncode == 0, result.stderr
    body, _, code = result.stdout.decode().rpartition("\n")
    assert code == "401"
    assert json.loads(body) == {"error": "invalid_token"}
    assert sandbox.ntb.stats()["rejected"] == 1


async def test_passthrough_tunnel_survives_half_close(make_sidecar: SidecarFactory) -> None:
    """The app sends everything and shuts its write side; the answer still comes back whole."""

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        sidecar = await make_sidecar(passthrough=[f"127.0.0.1:{port}"])
        reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.proxy_port)
        writer.write(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        payload = os.urandom(5_000_000)
        writer.write(payload)
        await writer.drain()
        writer.write_eof()
        echoed = await asyncio.wait_for(reader.read(), 20)
        writer.close()
    finally:
        server.close()
    assert len(echoed) == len(payload) and echoed == payload
