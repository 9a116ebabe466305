"""Routing decisions: which upstream, or a refusal, for each request-target shape."""

from __future__ import annotations

import pytest

from sidecar.proxy.router import BadTarget, Router, Target, request_target


@pytest.mark.parametrize(
    ("raw", "host_header", "expected"),
    [
        ("http://api.moex.com/ntb/x?a=1", None,
         Target("api.moex.com", 80, "/ntb/x?a=1", "http://api.moex.com")),
        ("HTTP://API.MOEX.COM:8080/a%2Fb", "ignored",
         Target("api.moex.com", 8080, "/a%2Fb", "http://API.MOEX.COM:8080")),
        ("http://api.moex.com", None, Target("api.moex.com", 80, "/", "http://api.moex.com")),
        ("http://api.moex.com?q=1", None,
         Target("api.moex.com", 80, "/?q=1", "http://api.moex.com")),
        ("https://api.moex.com/x", None,
         Target("api.moex.com", 443, "/x", "https://api.moex.com")),
        ("/ntb/x", "Api.Moex.Com", Target("api.moex.com", 80, "/ntb/x", "http://Api.Moex.Com")),
        ("/ntb/x", "api.moex.com:8080",
         Target("api.moex.com", 8080, "/ntb/x", "http://api.moex.com:8080")),
        ("http://[::1]:8080/p", None, Target("::1", 8080, "/p", "http://[::1]:8080")),
    ],
)
def test_request_target(raw: str, host_header: str | None, expected: Target) -> None:
    assert request_target(raw, host_header) == expected


@pytest.mark.parametrize(
    ("raw", "host_header"),
    [
        ("http://api.moex.com@evil.example/", None),
        ("http://user:pw@api.moex.com/", None),
        ("/x", None),
        ("*", "api.moex.com"),
        ("http://api.moex.com:99999/", None),
        ("http://:80/", None),
    ],
)
def test_bad_targets(raw: str, host_header: str | None) -> None:
    with pytest.raises(BadTarget):
        request_target(raw, host_header)


def test_router_matches_host_any_port_and_exact_host_port() -> None:
    router = Router({"ntb": ["api.moex.com"], "kisc": ["ax.kisc.kz:8243"]})
    assert router.resolve("api.moex.com", 80) == "ntb"
    assert router.resolve("API.MOEX.COM.", 8080) == "ntb"
    assert router.resolve("ax.kisc.kz", 8243) == "kisc"
    assert router.resolve("ax.kisc.kz", 80) is None
    assert router.resolve("evil.example", 80) is None
    assert router.resolve("moex.com", 80) is None
