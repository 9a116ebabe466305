"""What happens inside an intercepted tunnel, with raw sockets: plain HTTP after
``CONNECT host:80``, keep-alive over TLS, a Host naming another upstream, ALPN, and the
per-upstream switch."""

from __future__ import annotations

import asyncio
import json
import ssl
from pathlib import Path
from typing import Any

from tests.helpers.sidecars import SidecarFactory
from tests.interception.conftest import HOST, Intercepting


async def _connect(port: int, authority: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200"), head
    return reader, writer


async def _answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, Any]]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    status = int(head.split(b" ", 2)[1])
    length = next(
        int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return status, json.loads(await reader.readexactly(length))


async def test_plain_http_inside_a_tunnel_goes_through_the_pipeline(
    intercepting: Intercepting,
) -> None:
    # What undici's ProxyAgent does for an http:// URL: CONNECT host:80, then plain HTTP.
    reader, writer = await _connect(intercepting.port, f"{HOST}:80")
    for n in (1, 2):  # keep-alive inside the tunnel
        writer.write(f"GET /ntb/x?n={n} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
        status, report = await _answer(reader)
        assert status == 200
        assert report["query"] == f"n={n}"
        assert report["headers"]["authorization"].startswith("Bearer ")
    writer.close()


async def test_pipelined_requests_over_tls(intercepting: Intercepting) -> None:
    reader, writer = await _connect(intercepting.port, f"{HOST}:443")
    ctx = ssl.create_default_context(cafile=str(intercepting.ca_file))
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    await writer.start_tls(ctx, server_hostname=HOST)
    # Only HTTP/1.1 is offered: a client that prefers h2 still gets http/1.1.
    assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == "http/1.1"
    writer.write(b"".join(
        f"GET /ntb/p{n} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode() for n in range(3)
    ))
    for n in range(3):
        status, report = await _answer(reader)
        assert (status, report["path"]) == (200, f"/ntb/p{n}")
    writer.close()


async def test_a_host_of_no_upstream_inside_the_tunnel_is_refused(
    intercepting: Intercepting,
) -> None:
    reader, writer = await _connect(intercepting.port, f"{HOST}:80")
    writer.write(b"GET /ntb HTTP/1.1\r\nHost: evil.example.com\r\n\r\n")
    status, body = await _answer(reader)
    assert status == 403 and body["error"] == "host_mismatch"
    writer.close()


async def test_connect_and_trace_inside_a_tunnel_are_refused(
    intercepting: Intercepting,
) -> None:
    reader, writer = await _connect(intercepting.port, f"{HOST}:80")
    writer.write(f"TRACE /ntb HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
    status, body = await _answer(reader)
    assert status == 405 and body["error"] == "method_not_allowed"
    writer.write(f"CONNECT {HOST}:443 HTTP/1.1\r\nHost: {HOST}:443\r\n\r\n".encode())
    status, body = await _answer(reader)
    assert status == 403 and body["error"] == "connect_refused"
    writer.close()


async def test_unknown_host_connect_is_still_refused(intercepting: Intercepting) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", intercepting.port)
    writer.write(b"CONNECT example.org:443 HTTP/1.1\r\nHost: example.org:443\r\n\r\n")
    status, body = await _answer(reader)
    assert status == 403 and body["error"] == "connect_refused"
    writer.close()


async def test_interception_off_for_one_upstream(
    make_sidecar: SidecarFactory, tmp_path: Path
) -> None:
    sidecar = await make_sidecar(
        {"interception": False}, interception={"state_dir": str(tmp_path / "s")}
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.proxy_port)
    writer.write(f"CONNECT {HOST}:443 HTTP/1.1\r\nHost: {HOST}:443\r\n\r\n".encode())
    status, body = await _answer(reader)
    assert status == 403 and body["error"] == "connect_refused"
    writer.close()


async def test_without_the_block_connect_is_refused(make_sidecar: SidecarFactory) -> None:
    sidecar = await make_sidecar()
    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.proxy_port)
    writer.write(f"CONNECT {HOST}:443 HTTP/1.1\r\nHost: {HOST}:443\r\n\r\n".encode())
    status, _ = await _answer(reader)
    assert status == 403
    writer.close()
