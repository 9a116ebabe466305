"""When the target cannot serve: 502 for connection and TLS failures, 504 for timeouts, as JSON
naming the upstream and the reason. TLS verification never falls back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import structlog.testing

from sidecar.sandbox.pki import Pki
from sidecar.sandbox.servers import SandboxStack
from tests.helpers.sidecars import SidecarFactory, proxy_url

NTB = "http://api.moex.com/ntb/x"


async def _get(proxy: str) -> tuple[int, dict[str, object]]:
    async with aiohttp.ClientSession() as session:
        async with session.get(NTB, proxy=proxy) as resp:
            return resp.status, await resp.json()


@pytest.fixture
async def silent_tls_server(sandbox: SandboxStack) -> AsyncIterator[int]:
    """A TLS server (trusted certificate) that reads requests and never answers."""
    cert = sandbox.pki.issue_server("silent")
    ctx = sandbox.pki.server_ssl_context(cert)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.read(65536)
            await asyncio.sleep(3600)
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
    yield server.sockets[0].getsockname()[1]
    server.close()


async def test_untrusted_server_certificate_is_502_and_nothing_is_sent(
    sandbox: SandboxStack, make_sidecar: SidecarFactory, tmp_path: Path
) -> None:
    other_ca = Pki(tmp_path / "other-ca", name="someone else")
    sidecar = await make_sidecar({"tls": {"ca_file": str(other_ca.ca_file)}, "eager": False,
                                  "auth": {"tls": {"ca_file": str(sandbox.pki.ca_file)}}})
    status, body = await _get(proxy_url(sidecar))
    assert status == 502
    assert body["error"] == "upstream_tls"
    assert body["upstream"] == "moex-ntb"
    # OpenSSL's reason depends on whether the server sent its CA along with its own
    # certificate (an mTLS server does, from its verify store); either names the cause.
    message = str(body["message"])
    assert "failed verification: " in message
    assert "self-signed certificate" in message or "unable to get local issuer" in message
    assert sandbox.ntb.stats()["requests"] == sandbox.ntb.stats()["rejected"] == 0


async def test_certificate_for_another_host_is_502(
    sandbox: SandboxStack, make_sidecar: SidecarFactory
) -> None:
    # A certificate from the trusted CA, but naming another host than the one dialled.
    cert = sandbox.pki.issue_server("elsewhere", hosts=("other.example",))
    server = await asyncio.start_server(
        lambda r, w: w.close(), "127.0.0.1", 0, ssl=sandbox.pki.server_ssl_context(cert)
    )
    port = server.sockets[0].getsockname()[1]
    try:
        sidecar = await make_sidecar({"target": f"https://127.0.0.1:{port}"})
        status, body = await _get(proxy_url(sidecar))
    finally:
        server.close()
    assert status == 502
    assert body["error"] == "upstream_tls"
    assert "mismatch" in str(body["message"]).lower()


async def test_unreachable_target_is_502(make_sidecar: SidecarFactory) -> None:
    with_closed_port = await make_sidecar({"target": "https://127.0.0.1:1"})
    status, body = await _get(proxy_url(with_closed_port))
    assert status == 502
    assert body["error"] == "upstream_unreachable"
    assert "127.0.0.1:1" in str(body["message"])


async def test_silent_upstream_is_504_after_read_timeout(
    silent_tls_server: int, make_sidecar: SidecarFactory
) -> None:
    sidecar = await make_sidecar(
        {"target": f"https://127.0.0.1:{silent_tls_server}", "timeouts": {"read": 0.5}}
    )
    started = asyncio.get_running_loop().time()
    status, body = await _get(proxy_url(sidecar))
    assert status == 504
    assert body["error"] == "upstream_timeout"
    assert asyncio.get_running_loop().time() - started < 3


@pytest.mark.ntb_mtls  # the sandbox NTB API asks for the client certificate
async def test_missing_client_certificate_is_refused_by_mtls_server(
    sandbox: SandboxStack, make_sidecar: SidecarFactory
) -> None:
    sidecar = await make_sidecar({"tls": {"cert_file": None, "key_file": None}})
    status, body = await _get(proxy_url(sidecar))
    assert status == 502
    assert body["upstream"] == "moex-ntb"


@pytest.mark.ntb_mtls  # the sandbox NTB API asks for the client certificate
async def test_client_certificate_from_pkcs12(
    sandbox: SandboxStack, make_sidecar: SidecarFactory, tmp_path: Path
) -> None:
    cert = sandbox.pki.issue_client("from-p12", "p12-user")
    password_file = tmp_path / "p12-password"
    password_file.write_text(cert.p12_password + "\n")
    sidecar = await make_sidecar(
        {"tls": {"cert_file": None, "key_file": None, "p12_file": str(cert.p12_file),
                 "p12_password_file": str(password_file)}}
    )
    status, body = await _get(proxy_url(sidecar))
    assert status == 200
    client_cert = body["client_cert"]
    assert isinstance(client_cert, dict) and "CN=p12-user" in client_cert["subject"]


async def test_client_certificate_expiry_in_status_and_warned(
    sandbox: SandboxStack, make_sidecar: SidecarFactory
) -> None:
    cert = sandbox.pki.issue_client("short-lived", "bank-user", valid_days=3)
    with structlog.testing.capture_logs() as events:
        sidecar = await make_sidecar(
            {"tls": {"cert_file": str(cert.cert_file), "key_file": str(cert.key_file)}}
        )
    warnings = [e for e in events if e["event"] == "client_certificate_expiring"]
    assert len(warnings) == 1 and warnings[0]["subject"].startswith("CN=bank-user,")
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{sidecar.admin_port}/status") as resp:
            status = await resp.json()
    shown = status["upstreams"]["moex-ntb"]["client_cert"]
    assert shown["subject"].startswith("CN=bank-user,")
    assert 2.9 < shown["days_left"] < 3.01


class ClosingOnReuse:
    """Answers the first request on each connection, then closes without answering the
    next one: what a keep-alive race with an upstream's idle timeout looks like."""

    def __init__(self) -> None:
        self.connections = 0
        self.answered = 0
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        served = 0
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            if length:
                await reader.readexactly(length)
            if served:
                writer.close()  # the request is lost: no answer at all
                return
            served += 1
            self.answered += 1
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]


async def test_stale_pooled_connection_is_retried_for_idempotent_requests_only(
    make_sidecar: SidecarFactory,
) -> None:
    api = ClosingOnReuse()
    port = await api.start()
    try:
        sidecar = await make_sidecar({"target": f"http://127.0.0.1:{port}"})
        async with aiohttp.ClientSession() as session:
            statuses = []
            for _ in range(3):  # each GET after the first meets a connection that dies
                async with session.get(NTB, proxy=proxy_url(sidecar)) as resp:
                    statuses.append(resp.status)
                    await resp.read()
            assert statuses == [200, 200, 200]
            async with session.post(NTB, data=b"x", proxy=proxy_url(sidecar)) as resp:
                body = await resp.json()
                assert resp.status == 502  # never sent twice: a POST may not be idempotent
            assert body["error"] == "upstream_error"
    finally:
        assert api.server is not None
        api.server.close()
    assert api.answered == 3 and api.connections == 3  # each retry took a new connection
