"""The proxy listener (``sidecar.proxy.listener``) decides where a request goes, and is never
an open proxy: unknown hosts, CONNECT outside ``passthrough``, upgrades and targets it will
not interpret are refused with JSON, counted without the app's words as labels; the admin
port and the proxy port answer only their own requests."""

from __future__ import annotations

import asyncio
import json
import subprocess

import pytest
from prometheus_client import generate_latest

from sidecar.sandbox.servers import SandboxStack
from tests.helpers.listener import bare_listener, one_answer
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


async def test_refusals_are_counted_without_the_host_and_keep_the_connection() -> None:
    async with bare_listener() as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        for request in (b"GET http://evil.example:8080/a HTTP/1.1\r\nHost: x\r\n\r\n",
                        b"GET /b HTTP/1.1\r\nHost: Evil.Example.\r\n\r\n"):
            writer.write(request)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
            body = json.loads(await reader.readexactly(length))
            assert head.startswith(b"HTTP/1.1 403 Forbidden\r\n")
            assert b"Connection: close" not in head  # one refusal does not cost the connection
            assert body["error"] == "unknown_host"
        writer.close()
    assert proxy.rejections("none", "unknown_host") == 2
    exposition = generate_latest(proxy.metrics.registry).decode()
    assert "evil" not in exposition.lower()


async def test_the_refusal_names_the_host_and_port_asked_for() -> None:
    async with bare_listener() as proxy:
        _, body = await one_answer(
            proxy.port, b"GET http://evil.example:8080/a HTTP/1.1\r\nHost: x\r\n\r\n")
    assert json.loads(body)["message"].startswith("evil.example:8080 is not a configured upstream")


@pytest.mark.parametrize(
    "request_line",
    [
        b"GET http://api.moex.com@evil.example/ HTTP/1.1\r\nHost: api.moex.com",
        b"GET /no-host HTTP/1.1",
        b"OPTIONS * HTTP/1.1\r\nHost: api.moex.com",
        b"GET http://api.moex.com:99999/ HTTP/1.1\r\nHost: api.moex.com",
        b"GET http:///nohost HTTP/1.1\r\nHost: api.moex.com",
    ],
    ids=["userinfo", "origin-form-without-host", "asterisk", "bad-port", "empty-authority"],
)
async def test_targets_it_will_not_interpret_are_400(request_line: bytes) -> None:
    async with bare_listener() as proxy:
        head, body = await one_answer(proxy.port, request_line + b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400 ")
        assert json.loads(body)["error"] == "bad_request"
        assert proxy.rejections("none", "bad_request") == 1


async def test_connect_needs_a_listed_host_and_port() -> None:
    async with bare_listener(passthrough=["127.0.0.1:1"]) as proxy:
        other_port, body = await one_answer(
            proxy.port, b"CONNECT 127.0.0.1:2 HTTP/1.1\r\nHost: 127.0.0.1:2\r\n\r\n")
        assert other_port.startswith(b"HTTP/1.1 403 ")
        assert json.loads(body)["error"] == "connect_refused"
        no_port, body = await one_answer(
            proxy.port, b"CONNECT 127.0.0.1:x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert no_port.startswith(b"HTTP/1.1 400 ")
        assert json.loads(body)["message"] == "CONNECT needs host:port"
        assert proxy.rejections("none", "connect_refused") == 1


async def test_a_head_the_parser_refuses_is_counted_like_a_refusal() -> None:
    async with bare_listener() as proxy:
        head, body = await one_answer(proxy.port, b"NOT HTTP AT ALL\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400 ") and b"Connection: close" in head
        assert json.loads(body)["error"] == "bad_request"
        assert proxy.rejections("none", "bad_request") == 1


async def test_an_update_changes_what_is_tunnelled_for_new_requests() -> None:
    async def hello(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"hello")
        writer.close()

    remote = await asyncio.start_server(hello, "127.0.0.1", 0)
    target = f"127.0.0.1:{remote.sockets[0].getsockname()[1]}"
    connect = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode()
    try:
        async with bare_listener() as proxy:
            head, _ = await one_answer(proxy.port, connect)
            assert head.startswith(b"HTTP/1.1 403 ")
            proxy.handler.update({}, [target])
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            writer.write(connect)
            answer = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            assert answer == b"HTTP/1.1 200 Connection Established\r\n\r\nhello"
    finally:
        remote.close()


async def test_the_admin_port_never_forwards_and_the_proxy_port_never_serves_admin(
    sandbox: SandboxStack, make_sidecar: SidecarFactory
) -> None:
    sidecar = await make_sidecar()
    before = sandbox.ntb.stats()["requests"]
    head, body = await one_answer(
        sidecar.admin_port,
        b"GET http://api.moex.com/ntb/x HTTP/1.1\r\nHost: api.moex.com\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 404 ")
    assert json.loads(body)["error"] == "not_found"
    assert sandbox.ntb.stats()["requests"] == before  # nothing reached the upstream

    admin = f"127.0.0.1:{sidecar.admin_port}"
    for request in (f"GET /healthz HTTP/1.1\r\nHost: {admin}\r\n\r\n",
                    f"GET http://{admin}/healthz HTTP/1.1\r\nHost: {admin}\r\n\r\n"):
        head, body = await one_answer(sidecar.proxy_port, request.encode())
        assert head.startswith(b"HTTP/1.1 403 ")
        assert json.loads(body)["error"] == "unknown_host"
    head, _ = await one_answer(
        sidecar.proxy_port, f"CONNECT {admin} HTTP/1.1\r\nHost: {admin}\r\n\r\n".encode())
    assert head.startswith(b"HTTP/1.1 403 ")
