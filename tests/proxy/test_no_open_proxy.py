"""Never an open proxy, as a property: whatever request target and Host an app (or an
attacker on the pod's loopback) sends, the sidecar either forwards to a configured upstream's
target or refuses. Every outgoing connection attempt is recorded and checked."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from sidecar.app import Sidecar
from sidecar.config import validate_config
from sidecar.proxy import upstream_client as client_module

CONFIGURED = ["api.moex.com", "ax.kisc.kz:8243"]
TARGETS = {"https://127.0.0.1:9/", "https://127.0.0.1:10/"}  # nothing listens: refused fast


def expected_target(method: str, target: str, host_header: str) -> str | None:
    """An independent oracle: where a correct sidecar sends this request, or None."""
    if method == "CONNECT":
        return None  # no passthrough configured
    lowered = target.lower()
    if lowered.startswith(("http://", "https://")):
        rest = target.split("://", 1)[1]
        authority = rest
        for stop in ("/", "?"):
            authority = authority.split(stop, 1)[0]
        default = 443 if lowered.startswith("https") else 80
    elif target.startswith("/"):
        authority, default = host_header, 80
    else:
        return None
    if not authority or "@" in authority:
        return None
    if authority.startswith("["):
        return None  # no IPv6 upstream is configured
    host, _, port_text = authority.partition(":")
    if port_text and not (port_text.isdigit() and int(port_text) <= 65535):
        return None
    port = int(port_text) if port_text else default
    host = host.lower().rstrip(".")
    if host == "api.moex.com":
        return "https://127.0.0.1:9/"
    if host == "ax.kisc.kz" and port == 8243:
        return "https://127.0.0.1:10/"
    return None

hosts = st.sampled_from([
    "api.moex.com", "API.MOEX.COM", "api.moex.com.", "ax.kisc.kz", "evil.example", "127.0.0.1",
    "localhost", "[::1]", "169.254.169.254", "api.moex.com.evil.example", "moex.com",
    "xn--80ak6aa92e.com", "api.moex.com@evil.example", "evil.example#api.moex.com", "",
])
ports = st.sampled_from(["", ":80", ":443", ":8243", ":8080", ":99999", ":0", ":abc"])
paths = st.sampled_from(["/", "/ntb/x?y=1", "//evil.example/", "/../../etc", "?q", "", "*"])
schemes = st.sampled_from(["http://", "https://", "HTTP://", "ftp://", "", "//"])


class Recorder:
    def __init__(self) -> None:
        self.urls: list[str] = []


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    seen = Recorder()
    original = client_module.UpstreamClient.send

    async def record(self: Any, method: str, url: Any, *args: Any, **kwargs: Any) -> Any:
        seen.urls.append(str(url))
        return await original(self, method, url, *args, **kwargs)

    monkeypatch.setattr(client_module.UpstreamClient, "send", record)
    return seen


def _config() -> dict[str, Any]:
    return {
        "listen": {"proxy": "127.0.0.1:0", "admin": "127.0.0.1:0"},
        "upstreams": {
            "moex": {"match": [CONFIGURED[0]], "target": "https://127.0.0.1:9",
                     "auth": {"type": "static", "token": "t0k3n-moex"}},
            "kisc": {"match": [CONFIGURED[1]], "target": "https://127.0.0.1:10",
                     "auth": {"type": "static", "token": "t0k3n-kisc"}},
        },
    }


async def _send(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(4096), 5)
    finally:
        writer.close()


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(scheme=schemes, host=hosts, port=ports, path=paths, host_header=hosts,
       method=st.sampled_from(["GET", "POST", "CONNECT", "OPTIONS"]))
def test_requests_go_to_configured_targets_or_are_refused(
    recorder: Recorder, scheme: str, host: str, port: str, path: str, host_header: str,
    method: str,
) -> None:
    target = f"{scheme}{host}{port}{path}" if method != "CONNECT" else f"{host}{port}"
    request = (f"{method} {target} HTTP/1.1\r\nHost: {host_header}\r\n"
               "Content-Length: 0\r\n\r\n").encode()

    async def run() -> bytes:
        sidecar = Sidecar(validate_config(_config()))
        await sidecar.start()
        try:
            return await _send(sidecar.proxy_port, request)
        finally:
            await sidecar.stop(grace=0.5)

    before = len(recorder.urls)
    answer = asyncio.run(run())
    sent = recorder.urls[before:]
    assert all(any(url.startswith(t) for t in TARGETS) for url in sent), sent
    status = answer.split(b" ", 2)[1] if answer.startswith(b"HTTP/1.") else b""
    expected = expected_target(method, target, host_header)
    event("routed" if expected else "refused")
    if expected is None:  # refused locally, or the connection was cut for malformed input
        assert not sent, (target, host_header, sent)
        assert status in (b"400", b"403", b"404", b"405", b"414", b"431", b""), answer[:200]
    else:  # routed to exactly that upstream; the app gets the unreachable target's 502
        assert sent and all(url.startswith(expected) for url in sent), (target, sent)
        assert status == b"502", answer[:200]
