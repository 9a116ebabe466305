"""Hop-by-hop headers stop at the sidecar; the app's Authorization is replaced."""

from __future__ import annotations

from multidict import CIMultiDict, CIMultiDictProxy

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
    out = upstream_headers(incoming, "tok")
    assert out.getall("Authorization") == ["Bearer tok"]
    assert out.getall("X-Custom") == ["a", "b"]
    assert out["Content-Type"] == "application/xml"
    for gone in ("Host", "Proxy-Authorization", "Connection", "X-Hop", "Keep-Alive", "TE",
                 "Transfer-Encoding", "Expect"):
        assert gone not in out


def test_downstream_headers_keep_cookies_and_drop_hop_by_hop() -> None:
    incoming = CIMultiDictProxy(
        CIMultiDict(
            [
                ("Set-Cookie", "a=1"),
                ("Set-Cookie", "b=2"),
                ("Connection", "close"),
                ("Transfer-Encoding", "chunked"),
                ("Content-Length", "10"),
                ("Location", "/status/1"),
            ]
        )
    )
    out = downstream_headers(incoming)
    assert out.getall("Set-Cookie") == ["a=1", "b=2"]
    assert out["Content-Length"] == "10" and out["Location"] == "/status/1"
    assert "Connection" not in out and "Transfer-Encoding" not in out
