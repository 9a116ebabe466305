"""Never an open proxy: unknown hosts and CONNECT are refused with JSON; passthrough tunnels."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess

from sidecar.sandbox.servers import SandboxStack
from tests.helpers.sidecars import SidecarFactory, proxy_url


async def _run(*args: str) -> subprocess.CompletedProcess[bytes]:
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    return subprocess.CompletedProcess(args, proc.returncode or 0, out, err)


async def _raw(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(65536), 5)
    writer.close()
    return data


def _json_body(response: bytes) -> dict[str, object]:
    head, _, body = response.partition(b"\r\n\r\n")
    assert b"application/json" in head
    return json.loads(body)


async def test_unknown_host_is_refused_with_json(
    sandbox: SandboxStack, make_sidecar: SidecarFactory
) -> None:
    sidecar = await make_sidecar()
    sandbox.idp.reset_stats()
    result = await _run(
        "curl", "-sS", "-x", proxy_url(sidecar), "-w", "\n%{http_code}", "http://evil.example/steal"
    )
    body, _, code = result.stdout.decode().rpartition("\n")
    assert code == "403"
    refusal = json.loads(body)
    assert refusal["error"] == "unknown_host"
    assert "evil.example" in refusal["message"]
    assert sandbox.ntb.stats()["requests"] == 0


async def test_host_port_match_is_exact(make_sidecar: SidecarFactory) -> None:
    sidecar = await make_sidecar({"match": ["api.moex.com:8443"]})
    wrong_port = await _raw(
        sidecar.proxy_port, b"GET http://api.moex.com/ntb/x HTTP/1.1\r\nHost: api.moex.com\r\n\r\n"
    )
    assert wrong_port.startswith(b"HTTP/1.1 403")
    right_port = await _raw(
        sidecar.proxy_port,
        b"GET http://API.MOEX.COM:8443/ntb/x HTTP/1.1\r\nHost: api.moex.com:8443\r\n\r\n",
    )
    assert right_port.startswith(b"HTTP/1.1 200")


async def test_absolute_uri_wins_over_host_header(make_sidecar: SidecarFactory) -> None:
    sidecar = await make_sidecar()
    # The URI names a host nobody configured; a Host header naming a configured one must not
    # smuggle it through.
    answer = await _raw(
        sidecar.proxy_port, b"GET http://evil.example/ HTTP/1.1\r\nHost: api.moex.com\r\n\r\n"
    )
    assert answer.startswith(b"HTTP/1.1 403")
    userinfo = await _raw(
        sidecar.proxy_port,
        b"GET http://api.moex.com@evil.example/ HTTP/1.1\r\nHost: api.moex.com\r\n\r\n",
    )
    assert userinfo.startswith(b"HTTP/1.1 400")
    assert _json_body(userinfo)["error"] == "bad_request"


async def test_connect_to_unlisted_host_is_refused(make_sidecar: SidecarFactory) -> None:
    sidecar = await make_sidecar()
    answer = await _raw(
        sidecar.proxy_port, b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n"
    )
    assert answer.startswith(b"HTTP/1.1 403")
    assert _json_body(answer)["error"] == "connect_refused"


async def test_upgrade_is_refused(make_sidecar: SidecarFactory) -> None:
    sidecar = await make_sidecar()
    answer = await _raw(
        sidecar.proxy_port,
        b"GET http://api.moex.com/ntb/ws HTTP/1.1\r\nHost: api.moex.com\r\n"
        b"Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 400")
    assert _json_body(answer)["error"] == "upgrade_refused"


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
