"""Real clients (curl, requests) through the sidecar to the sandbox NTB API over mTLS."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
from pathlib import Path

import aiohttp
import pytest
import requests

from sidecar.app import Sidecar
from sidecar.sandbox.ntb import download_sha256
from sidecar.sandbox.servers import SandboxStack
from tests.helpers.sidecars import SidecarFactory, proxy_url

NTB = "http://api.moex.com/ntb"


async def curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def _requests_get(url: str, **kwargs: object) -> requests.Response:
    # requests finds the proxy in HTTP_PROXY, as a legacy app would.
    session = requests.Session()
    session.trust_env = True
    return session.request(kwargs.pop("method", "GET"), url, timeout=30, **kwargs)  # type: ignore[arg-type]


def _bearer(summary: dict[str, object]) -> str:
    headers = summary["headers"]
    assert isinstance(headers, dict)
    return str(headers["authorization"])


@pytest.mark.ntb_mtls  # the sandbox NTB API asks for the client certificate
async def test_curl_reaches_api_with_token_and_client_cert(
    sandbox: SandboxStack, sidecar: Sidecar
) -> None:
    result = await curl(
        "-x", proxy_url(sidecar), f"{NTB}/contracts?date=2026-11-20&x=%2F",
        "-H", "Authorization: Basic YXBwOmFwcA==",  # the app's own credentials are replaced
        "-H", "X-Trace: 42",
    )
    seen = json.loads(result.stdout)
    assert seen["path"] == "/ntb/contracts"
    assert seen["query"] == "date=2026-11-20&x=%2F"
    bearer = _bearer(seen)
    assert bearer.startswith("Bearer ")
    assert sandbox.idp.is_access_token_valid(bearer.removeprefix("Bearer "))
    assert seen["headers"]["x-trace"] == "42"
    assert seen["client_cert"] is not None and "CN=sidecar" in seen["client_cert"]["subject"]
    assert seen["body_length"] == 0


async def test_requests_via_http_proxy_env(
    sandbox: SandboxStack, sidecar: Sidecar, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy_url(sidecar))
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    body = os.urandom(1024)
    resp = await asyncio.to_thread(
        _requests_get, f"{NTB}/upload", method="POST", data=body,
        headers={"Content-Type": "application/xml"},
    )
    assert resp.status_code == 200, resp.text
    seen = resp.json()
    assert seen["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert seen["body_length"] == 1024
    assert seen["headers"]["content-type"] == "application/xml"
    assert sandbox.idp.is_access_token_valid(_bearer(seen).removeprefix("Bearer "))


@pytest.mark.parametrize("size", [0, 1024, 50 * 1024 * 1024])
async def test_body_is_untouched_both_ways(sidecar: Sidecar, tmp_path: Path, size: int) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(os.urandom(size))
    digest = hashlib.sha256(blob.read_bytes()).hexdigest()
    summary = json.loads(
        (await curl("-x", proxy_url(sidecar), f"{NTB}/upload", "--data-binary", f"@{blob}")).stdout
    )
    assert (summary["body_length"], summary["body_sha256"]) == (size, digest)
    # ?echo=1 sends the body back: the response passes the sidecar untouched as well.
    echoed = tmp_path / "echoed"
    await curl(
        "-x", proxy_url(sidecar), f"{NTB}/upload?echo=1", "--data-binary", f"@{blob}",
        "-o", str(echoed),
    )
    assert hashlib.sha256(echoed.read_bytes()).hexdigest() == digest


async def test_chunked_upload_and_download(sidecar: Sidecar, tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(os.urandom(3 * 1024 * 1024 + 7))
    digest = hashlib.sha256(blob.read_bytes()).hexdigest()
    summary = json.loads(
        (
            await curl(
                "-x", proxy_url(sidecar), f"{NTB}/upload", "-H", "Transfer-Encoding: chunked",
                "--data-binary", f"@{blob}",
            )
        ).stdout
    )
    assert summary["headers"].get("transfer-encoding") == "chunked"
    assert "content-length" not in summary["headers"]
    assert summary["body_sha256"] == digest

    for chunked in ("0", "1"):
        out = tmp_path / f"download-{chunked}"
        result = await curl(
            "-x", proxy_url(sidecar), "-D", "-", "-o", str(out),
            f"{NTB}/download?size=5000000&seed=s&chunked={chunked}",
        )
        headers = result.stdout.decode().lower()
        assert ("transfer-encoding: chunked" in headers) == (chunked == "1")
        assert hashlib.sha256(out.read_bytes()).hexdigest() == download_sha256(5_000_000, "s")


async def test_keep_alive_to_the_app(sidecar: Sidecar) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(5):
            async with session.get(f"{NTB}/k", proxy=proxy_url(sidecar)) as resp:
                assert resp.status == 200
                await resp.read()
        connector = session.connector
        assert connector is not None
        # One pooled connection served all five requests.
        assert sum(len(v) for v in connector._conns.values()) == 1  # type: ignore[attr-defined]


async def test_origin_form_routes_by_host(sandbox: SandboxStack, sidecar: Sidecar) -> None:
    result = await curl(
        f"http://127.0.0.1:{sidecar.proxy_port}/ntb/direct?a=1", "-H", "Host: api.moex.com"
    )
    seen = json.loads(result.stdout)
    assert seen["path"] == "/ntb/direct" and seen["query"] == "a=1"
    assert seen["headers"]["host"] == sandbox.api_url.removeprefix("https://")


async def test_response_headers_pass_as_sent(make_sidecar: SidecarFactory) -> None:
    """No Content-Type or Server is invented; a 304 keeps its Content-Length."""
    answers = {
        b"/plain": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Up: 1\r\n\r\nhi",
        b"/304": b"HTTP/1.1 304 Not Modified\r\nContent-Length: 1234\r\nETag: \"v1\"\r\n\r\n",
    }

    async def raw_api(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            path = line.split(b" ")[1]
            while (await reader.readline()) not in (b"\r\n", b""):
                pass
            writer.write(answers[path])
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(raw_api, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        sidecar = await make_sidecar({"target": f"http://127.0.0.1:{port}"})
        plain = await _raw_request(sidecar.proxy_port, "/plain")
        not_modified = await _raw_request(sidecar.proxy_port, "/304")
    finally:
        server.close()
    head, _, body = plain.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and body == b"hi"
    assert b"\r\nx-up: 1" in head.lower()
    assert b"content-type" not in head.lower() and b"\r\nserver:" not in head.lower()
    assert b"\r\ncontent-length: 1234" in not_modified.lower()


async def _raw_request(port: int, path: str) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"GET http://api.moex.com{path} HTTP/1.1\r\nHost: api.moex.com\r\n"
        "Connection: close\r\n\r\n".encode()
    )
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return data


async def test_app_hanging_up_mid_download_frees_everything(sidecar: Sidecar) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.proxy_port)
    writer.write(b"GET http://api.moex.com/ntb/download?size=50000000 HTTP/1.1\r\n"
                 b"Host: api.moex.com\r\n\r\n")
    got = 0
    while got < 1_000_000:
        got += len(await reader.read(65536))
    writer.close()  # the app goes away with 49 MB still to come
    upstream = sidecar.upstreams["moex-ntb"]
    for _ in range(50):
        if upstream.inflight.count == 0:
            break
        await asyncio.sleep(0.1)
    assert upstream.inflight.count == 0
    assert upstream.client.in_use == 0  # the half-read answer's connection was let go
    # The pool is not poisoned: the next requests go through.
    async with aiohttp.ClientSession() as session:
        for _ in range(3):
            async with session.get(f"{NTB}/after", proxy=proxy_url(sidecar)) as resp:
                assert resp.status == 200
                await resp.read()
