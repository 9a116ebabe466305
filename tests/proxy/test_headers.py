"""Hop-by-hop headers stop at the sidecar; the app's Authorization is replaced."""

from __future__ import annotations

from multidict import CIMultiDict, CIMultiDictProxy

from sidecar.config.models import HeaderDate
from sidecar.proxy.headers import downstream_headers, upstream_headers


def test_upstream_headers() -> None:
    incoming = CIMultiDictProxy(
        CIMultiDict(
            [
                ("Host", "api.moex.com"),
                ("Authorization", "Basic app-creds"),
                ("Proxy-Authorization", "Basic proxy-creds"),
                ("Connection", "keep-alive, X-Hop"),
                ("X-Hop", "drop me"),
                ("Keep-Alive", "timeout=5"),
                ("TE", "trailers"),
                ("Transfer-Encoding", "chunked"),
                ("Expect", "100-continue"),
                ("X-Custom", "a"),
                ("X-Custom", "b"),
                ("Content-Type", "application/xml"),
            ]
        )
    )
    out = upstream_headers(incoming, {}, HeaderDate())
    assert "Authorization" not in out  # the app's is dropped; the pipeline sets the token
    assert out.getall("X-Custom") == ["a", "b"]
    assert out["Content-Type"] == "application/xml"
    for gone in ("Host", "Proxy-Authorization", "Connection", "X-Hop", "Keep-Alive", "TE",
                 "Transfer-Encoding", "Expect"):
        assert gone not in out


def test_downstream_headers_keep_cookies_and_drop_hop_by_hop() -> None:
    incoming = [
        (b"Set-Cookie", b"a=1"),
        (b"Set-Cookie", b"b=2"),
        (b"Connection", b"close, X-Hop"),
        (b"X-Hop", b"drop me"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Content-Length", b"10"),
        (b"Location", b"/status/1"),
        (b"X-Bytes", b"caf\xe9"),  # not UTF-8: passed on as it came
    ]
    out, names = downstream_headers(incoming)
    assert names == {b"set-cookie", b"content-length", b"location", b"x-bytes"}
    assert out == [
        (b"Set-Cookie", b"a=1"),
        (b"Set-Cookie", b"b=2"),
        (b"Content-Length", b"10"),
        (b"Location", b"/status/1"),
        (b"X-Bytes", b"caf\xe9"),
    ]


def test_configured_headers_are_added_only_when_missing() -> None:
    import re
    import uuid
    from email.utils import parsedate_to_datetime

    templates = {
        "x-fapi-interaction-id": "{uuid}",
        "x-fapi-auth-date": "{now}",
        "x-client": "legacy-{uuid}",
    }
    incoming = CIMultiDictProxy(CIMultiDict([("X-Client", "the-apps-own")]))
    kz = upstream_headers(incoming, templates, HeaderDate(format="iso8601", utc_offset="+06:00"))
    assert str(uuid.UUID(kz["x-fapi-interaction-id"])) == kz["x-fapi-interaction-id"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+06:00", kz["x-fapi-auth-date"])
    assert kz.getall("X-Client") == ["the-apps-own"]

    fapi = upstream_headers(incoming, templates, HeaderDate(format="http"))
    assert fapi["x-fapi-auth-date"].endswith(" GMT")
    assert parsedate_to_datetime(fapi["x-fapi-auth-date"]).tzinfo is not None
    other = upstream_headers(incoming, templates, HeaderDate())
    assert other["x-fapi-interaction-id"] != fapi["x-fapi-interaction-id"]
