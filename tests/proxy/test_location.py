"""``Location`` and ``Content-Location`` at the upstream's target come back at the origin the
app called (as nginx's ``proxy_redirect default``); every other value is left alone."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from sidecar.app import Sidecar
from sidecar.proxy.headers import downstream_headers
from sidecar.proxy.location import TargetUrls
from tests.helpers.scripted import ScriptedServers, ScriptedUpstream

APP = "http://api.moex.com"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"https://api.moex.com/reg/1", b"http://api.moex.com/reg/1"),
        (b"https://API.Moex.COM/reg/1?a=b#f", b"http://api.moex.com/reg/1?a=b#f"),
        (b"HTTPS://api.moex.com:443/reg", b"http://api.moex.com/reg"),  # default port written
        (b"https://api.moex.com.:443/reg", b"http://api.moex.com/reg"),  # FQDN dot
        (b"https://api.moex.com", b"http://api.moex.com"),
        (b"https://api.moex.com?x=1", b"http://api.moex.com?x=1"),
        # left alone
        (b"/reg/1", b"/reg/1"),
        (b"reg/1", b"reg/1"),
        (b"//api.moex.com/reg", b"//api.moex.com/reg"),
        (b"https://other.example/reg", b"https://other.example/reg"),
        (b"https://api.moex.com.evil.example/reg", b"https://api.moex.com.evil.example/reg"),
        (b"https://api.moex.com:8443/reg", b"https://api.moex.com:8443/reg"),
        (b"http://api.moex.com/reg", b"http://api.moex.com/reg"),  # another scheme, port 80
        (b"https://user@api.moex.com/reg", b"https://user@api.moex.com/reg"),
        (b"https://evil.example@api.moex.com/", b"https://evil.example@api.moex.com/"),
        (b"https://api.moex.com:x/reg", b"https://api.moex.com:x/reg"),
        (b"urn:x:y", b"urn:x:y"),
    ],
)
def test_rewrite_only_the_targets_origin(value: bytes, expected: bytes) -> None:
    assert TargetUrls("https://api.moex.com").rewrite(value, APP) == expected


@pytest.mark.parametrize(
    ("target", "value", "expected"),
    [
        ("https://h:8443/api", b"https://h:8443/api/reg/1", b"http://a:80/reg/1"),
        ("https://h:8443/api", b"https://h:8443/api", b"http://a:80/"),
        ("https://h:8443/api", b"https://h:8443/api?x", b"http://a:80/?x"),
        ("https://h:8443/api", b"https://h:8443/api2/x", b"https://h:8443/api2/x"),
        ("https://h:8443/api", b"https://h:8443/other", b"https://h:8443/other"),
        ("https://h:8443/api", b"https://h/api/x", b"https://h/api/x"),  # 443, not 8443
        ("https://[::1]:8443", b"https://[::1]:8443/x", b"http://a:80/x"),
        ("https://[::1]:8443", b"https://[::1]/x", b"https://[::1]/x"),
        ("https://[::1]:8443", b"https://[::1:8443/x", b"https://[::1:8443/x"),
    ],
)
def test_a_target_with_a_path_prefix_or_a_port(target: str, value: bytes, expected: bytes) -> None:
    assert TargetUrls(target).rewrite(value, "http://a:80") == expected


def test_downstream_headers_rewrite_both_headers_and_nothing_else() -> None:
    raw = [
        (b"Location", b"https://api.moex.com/reg/1"),
        (b"content-location", b"https://api.moex.com/doc"),
        (b"Link", b"<https://api.moex.com/next>; rel=next"),
        (b"Refresh", b"0; url=https://api.moex.com/x"),
    ]
    out, names = downstream_headers(raw, TargetUrls("https://api.moex.com"), APP)
    assert out == [
        (b"Location", b"http://api.moex.com/reg/1"),
        (b"content-location", b"http://api.moex.com/doc"),
        raw[2],
        raw[3],
    ]
    assert names == {b"location", b"content-location", b"link", b"refresh"}
    # Without the app's origin (no target known) nothing changes.
    assert downstream_headers(raw)[0] == raw


# -- through a running sidecar -----------------------------------------------------------------


@pytest.fixture
def redirecting(scripted_upstreams: ScriptedServers) -> Callable[..., Awaitable[str]]:
    """Starts an upstream answering every request with ``status`` and the given headers
    (``{target}`` is the upstream's own origin, ``{authority}`` its host and port)."""

    async def start(status: bytes, headers: list[tuple[bytes, bytes]]) -> str:
        upstream = await scripted_upstreams.start(ScriptedUpstream(), "redirecting")
        origin = upstream.url.encode()
        lines = b"".join(
            name + b": " + value.replace(b"{target}", origin).replace(
                b"{authority}", origin.removeprefix(b"https://")) + b"\r\n"
            for name, value in headers
        )
        upstream.default = (b"HTTP/1.1 " + status + b"\r\n" + lines
                            + b"Content-Length: 0\r\n\r\n")
        return upstream.url

    return start


async def _head(sidecar: Sidecar, request: bytes) -> dict[str, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.proxy_port)
    try:
        writer.write(request)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    finally:
        writer.close()
    lines = head.decode("latin-1").split("\r\n")
    fields = dict(line.split(": ", 1) for line in lines[1:] if line)
    return {"status": lines[0], **{k.lower(): v for k, v in fields.items()}}


ABSOLUTE = b"GET http://api.moex.com/reg HTTP/1.1\r\nHost: api.moex.com\r\n\r\n"
ORIGIN_FORM = b"GET /reg HTTP/1.1\r\nHost: api.moex.com:8080\r\n\r\n"


@pytest.mark.parametrize("header", [b"Location", b"Content-Location"])
async def test_a_location_at_the_target_comes_back_at_the_apps_origin(
    make_sidecar: Any, redirecting: Any, header: bytes
) -> None:
    target = await redirecting(b"202 Accepted", [(header, b"{target}/reg/2024-01-01/17")])
    sidecar: Sidecar = await make_sidecar({"target": target})
    name = header.decode().lower()
    answer = await _head(sidecar, ABSOLUTE)
    assert answer["status"] == "HTTP/1.1 202 Accepted"
    assert answer[name] == "http://api.moex.com/reg/2024-01-01/17"
    # Origin-form: the Host header is the origin the app called, its port included.
    answer = await _head(sidecar, ORIGIN_FORM)
    assert answer[name] == "http://api.moex.com:8080/reg/2024-01-01/17"


@pytest.mark.parametrize(
    "value",
    [
        b"/reg/17",
        b"https://passport.moex.com/login",
        b"https://{authority}0/reg",  # the same host, another port
        b"http://{authority}/reg",  # another scheme
        b"https://u@{authority}/reg",
    ],
)
async def test_other_locations_pass_unchanged(
    make_sidecar: Any, redirecting: Any, value: bytes
) -> None:
    target = await redirecting(b"302 Found", [(b"Location", value)])
    sidecar: Sidecar = await make_sidecar({"target": target})
    answer = await _head(sidecar, ABSOLUTE)
    assert answer["status"] == "HTTP/1.1 302 Found"
    authority = target.removeprefix("https://")
    assert answer["location"] == value.decode().replace("{authority}", authority)
