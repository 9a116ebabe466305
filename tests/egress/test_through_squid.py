"""The sidecar behind a real Squid that demands basic auth: logins and API calls go through
CONNECT tunnels with TLS (and mTLS) end to end; the proxy's failures have their own codes."""

from __future__ import annotations

import asyncio
import secrets
import socket
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from sidecar.sandbox.demo import NTB_HOST
from sidecar.sandbox.servers import SandboxStack
from tests.egress.conftest import egress_block
from tests.egress.squid import Squid
from tests.helpers.sidecars import Kisc, SidecarFactory

STATIC_HOST = "static.example"


def _closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _static(target: str, **extra: Any) -> dict[str, Any]:
    """An upstream with a fixed token: its failures are the API leg's alone."""
    return {"match": [STATIC_HOST], "target": target, "auth": {"type": "static", "token": "t"},
            "circuit_breaker": None, **extra}


async def _call(sidecar_port: int, url: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any] | bytes]:
    async with aiohttp.ClientSession() as session:
        method = "POST" if body is not None else "GET"
        async with session.request(method, url, data=body, headers=headers,
                                   proxy=f"http://127.0.0.1:{sidecar_port}") as resp:
            raw = await resp.read()
            if resp.content_type == "application/json":
                return resp.status, await resp.json()
            return resp.status, raw


@pytest.mark.ntb_mtls  # checks mutual TLS inside the tunnel
async def test_ntb_login_and_api_go_through_squid_and_it_sees_only_connect(
    squid: Squid, sandbox: SandboxStack, make_sidecar: SidecarFactory, tmp_path: Path
) -> None:
    start = len(squid.log())
    sidecar = await make_sidecar(egress_proxy=egress_block(squid.url, tmp_path))
    marker = secrets.token_hex(16).encode()
    body = b"order=" + marker + b"&qty=10"
    status, answer = await _call(sidecar.proxy_port, f"http://{NTB_HOST}/ntb/orders", body,
                                 {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 200, answer
    assert isinstance(answer, dict) and answer["body_length"] == len(body)
    seen = sandbox.ntb.stats()["last_request"]
    assert "CN=sidecar" in seen["client_cert"]["subject"]  # mTLS inside the tunnel
    (token,) = sandbox.ntb.seen_tokens
    await sidecar.stop(grace=1.0)  # Squid logs a CONNECT when its tunnel closes
    api = f"CONNECT 127.0.0.1:{sandbox.api_server.port}"
    idp = f"CONNECT 127.0.0.1:{sandbox.idp_server.port}"
    log = squid.wait_for_log(api)[start:]
    assert f"200 {idp}" in log and f"200 {api}" in log, log
    lines = log.strip().splitlines()
    assert all(" CONNECT " in line for line in lines), log
    assert "Proxy-Authorization: Basic" in log  # the log does record headers it was sent
    for secret in (token, token[-40:], marker.decode(), "Bearer", "trader-password"):
        assert secret not in log
    assert marker.decode() not in squid.log("cache.log")


async def test_kisc_with_mtls_on_both_legs_goes_through_squid(
    squid: Squid, kisc: Kisc, kisc_config: dict[str, Any], make_sidecar: SidecarFactory,
    tmp_path: Path,
) -> None:
    start = len(squid.log())
    sidecar = await make_sidecar(
        upstreams={"kisc": kisc_config}, egress_proxy=egress_block(squid.url, tmp_path)
    )
    status, _ = await _call(
        sidecar.proxy_port, "http://ax.kisc.kz/etsfo/1.0.0/messages/", b"<Document/>",
        {"Content-Type": "application/xml", "x-idempotency-key": "EGRESS-1"},
    )
    assert status == 202
    seen = kisc.gateway.stats()["last_request"]
    assert "CN=bank-user" in seen["client_cert"]["subject"]
    assert kisc.gateway.is_access_token_valid(seen["headers"]["authorization"][len("Bearer "):])
    await sidecar.stop(grace=1.0)
    line = f"200 CONNECT 127.0.0.1:{kisc.server.port}"
    log = squid.wait_for_log(line)[start:]
    # Two tunnels at least: the token call and the API connection, to the same gateway.
    assert log.count(line) >= 2, log


async def test_wrong_proxy_password_is_egress_proxy_auth_for_api_and_login(
    squid: Squid, sandbox: SandboxStack, make_sidecar: SidecarFactory, tmp_path: Path
) -> None:
    sidecar = await make_sidecar(
        egress_proxy=egress_block(squid.url, tmp_path, password="not-the-password"),
        upstreams={
            "static": _static(sandbox.api_url, tls={"ca_file": str(sandbox.pki.ca_file)}),
            "moex-ntb": {"timeouts": {"token_wait": 2}},
        },
    )
    status, answer = await _call(sidecar.proxy_port, f"http://{STATIC_HOST}/ntb/orders")
    assert status == 502 and isinstance(answer, dict), answer
    assert answer["error"] == "egress_proxy_auth"
    assert "407" in answer["message"] and squid.url.removeprefix("http://") in answer["message"]
    # The login goes through the same proxy: its failure names it too.
    status, answer = await _call(sidecar.proxy_port, f"http://{NTB_HOST}/ntb/orders")
    assert status == 503 and isinstance(answer, dict), answer
    assert answer["error"] == "no_token"
    assert "egress_proxy_auth" in answer["message"] and "407" in answer["message"]
    assert sandbox.ntb.stats()["requests"] == 0 and sandbox.idp.stats()["calls"] == 0


async def test_proxy_down_is_egress_proxy_unreachable_never_direct(
    sandbox: SandboxStack, make_sidecar: SidecarFactory, tmp_path: Path
) -> None:
    down = f"http://127.0.0.1:{_closed_port()}"
    sidecar = await make_sidecar(
        egress_proxy=egress_block(down, tmp_path),
        upstreams={"static": _static(sandbox.api_url, tls={"ca_file": str(sandbox.pki.ca_file)},
                                     timeouts={"connect": 2})},
    )
    started = time.monotonic()
    status, answer = await _call(sidecar.proxy_port, f"http://{STATIC_HOST}/ntb/orders")
    elapsed = time.monotonic() - started
    assert status == 502 and isinstance(answer, dict), answer
    assert answer["error"] == "egress_proxy_unreachable"
    assert down.removeprefix("http://") in answer["message"]
    assert sandbox.ntb.stats()["rejected"] == 0  # no direct attempt reached the API
    print(f"proxy down answered in {elapsed:.3f} s (timeouts.connect 2 s)")


async def test_connect_the_proxy_cannot_serve_is_egress_proxy_refused_with_status(
    squid: Squid, sandbox: SandboxStack, make_sidecar: SidecarFactory, tmp_path: Path
) -> None:
    sidecar = await make_sidecar(
        egress_proxy=egress_block(squid.url, tmp_path),
        upstreams={"static": _static(f"https://127.0.0.1:{_closed_port()}")},
    )
    status, answer = await _call(sidecar.proxy_port, f"http://{STATIC_HOST}/x")
    assert status == 502 and isinstance(answer, dict), answer
    assert answer["error"] == "egress_proxy_refused"
    assert "503" in answer["message"], answer


async def test_a_proxy_silent_after_connect_is_a_connect_timeout_not_a_direct_try(
    sandbox: SandboxStack, make_sidecar: SidecarFactory, tmp_path: Path
) -> None:
    held: list[asyncio.StreamWriter] = []

    async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # takes the CONNECT, never answers

    silent = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    try:
        sidecar = await make_sidecar(
            egress_proxy=egress_block(f"http://127.0.0.1:{port}", tmp_path),
            upstreams={"static": _static(sandbox.api_url, timeouts={"connect": 1})},
        )
        status, answer = await _call(sidecar.proxy_port, f"http://{STATIC_HOST}/ntb/orders")
    finally:
        for writer in held:
            writer.close()
        silent.close()
    # The proxy took the connection: the target (or the proxy's way to it) is what is slow.
    assert status == 504 and isinstance(answer, dict), answer
    assert answer["error"] == "upstream_timeout"
    assert f"through egress proxy 127.0.0.1:{port}" in answer["message"]
    assert sandbox.ntb.stats()["rejected"] == 0


async def test_plain_http_target_is_tunnelled_when_plain_http_is_set(
    squid: Squid, make_sidecar: SidecarFactory, tmp_path: Path
) -> None:
    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"authorization": request.headers.get("Authorization")})

    app = web.Application()
    app.router.add_get("/hello", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    start = len(squid.log())
    try:
        sidecar = await make_sidecar(
            egress_proxy=egress_block(squid.url, tmp_path, plain_http=True),
            upstreams={"static": _static(f"http://127.0.0.1:{port}", allow_plaintext=True)},
        )
        status, answer = await _call(sidecar.proxy_port, f"http://{STATIC_HOST}/hello")
        assert status == 200 and answer == {"authorization": "Bearer t"}
        await sidecar.stop(grace=1.0)
    finally:
        await runner.cleanup()
    line = f"200 CONNECT 127.0.0.1:{port}"
    assert line in squid.wait_for_log(line)[start:]


async def test_upstream_null_and_no_proxy_go_direct(
    sandbox: SandboxStack, make_sidecar: SidecarFactory, tmp_path: Path
) -> None:
    down = f"http://127.0.0.1:{_closed_port()}"  # any use of the proxy would fail
    sidecar = await make_sidecar(
        egress_proxy=egress_block(down, tmp_path),
        upstreams={
            "moex-ntb": {"egress_proxy": None},
            "static": _static(
                sandbox.api_url, tls=sandbox_tls(sandbox),
                egress_proxy=egress_block(down, tmp_path, no_proxy=["127.0.0.1"]),
            ),
        },
    )
    status, answer = await _call(sidecar.proxy_port, f"http://{NTB_HOST}/ntb/orders")
    assert status == 200, answer
    status, answer = await _call(sidecar.proxy_port, f"http://{STATIC_HOST}/ntb/orders")
    assert status == 401, answer  # the API's own answer to the fixed token: reached direct


def sandbox_tls(sandbox: SandboxStack) -> dict[str, str]:
    return {
        "ca_file": str(sandbox.pki.ca_file),
        "cert_file": str(sandbox.client_cert.cert_file),
        "key_file": str(sandbox.client_cert.key_file),
    }
