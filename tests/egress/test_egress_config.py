"""The egress_proxy block: inherited by every upstream unless it sets its own (null: direct),
checked with errors that name the field and the fix, and which hosts go direct."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from sidecar.config import ConfigError, load_config, validate_config
from sidecar.config.egress import egress_dialer
from sidecar.http1.dial import Tunnel

BASE: dict[str, Any] = {
    "upstreams": {
        name: {"match": [f"{name}.example"], "target": f"https://{name}.example",
               "auth": {"type": "static", "token": "t"}}
        for name in ("a", "b", "c")
    }
}


def _config(egress: Any, **per_upstream: Any) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    if egress is not None:
        data["egress_proxy"] = egress
    for name, value in per_upstream.items():
        data["upstreams"][name]["egress_proxy"] = value
    return data


def test_top_level_is_inherited_overridden_or_turned_off() -> None:
    own = {"url": "http://other.corp:8080"}
    config = validate_config(_config({"url": "http://proxy.corp:3128"}, b=None, c=own))
    a, b, c = (config.upstreams[n].egress_proxy for n in "abc")
    assert a is not None and a.url == "http://proxy.corp:3128"
    assert b is None
    assert c is not None and c.url == "http://other.corp:8080"
    dialer = egress_dialer(a)
    assert dialer is not None
    assert dialer.tunnel == Tunnel("proxy.corp", 3128, None)


def test_without_a_top_level_block_only_the_upstreams_own_applies() -> None:
    config = validate_config(_config(None, a={"url": "http://p.corp:3128"}))
    assert config.upstreams["a"].egress_proxy is not None
    assert config.upstreams["b"].egress_proxy is None


def test_password_file_builds_basic_proxy_authorization(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    egress = {"url": "http://p.corp:3128", "username": "svc", "password_file": str(secret)}
    dialer = egress_dialer(validate_config(_config(egress)).upstreams["a"].egress_proxy)
    assert dialer is not None
    assert dialer.tunnel.authorization == "Basic c3ZjOnMzY3JldA=="  # base64("svc:s3cret")
    assert "s3cret" not in repr(dialer) and "c3ZjOnMzY3JldA" not in repr(dialer)


@pytest.mark.parametrize(
    ("egress", "expected"),
    [
        ({"url": "https://p.corp:3128"}, "egress_proxy.url: expected http://host:port"),
        ({"url": "http://u:pw@p.corp:3128"}, "use egress_proxy.username and"),
        ({"url": "http://p.corp"}, "egress_proxy.url: no port"),
        ({"url": "http://p.corp:3128/path"}, "egress_proxy.url: a proxy URL has no path"),
        ({"url": "http://p.corp:3128", "username": "u"}, "username and password go together"),
        ({"url": "http://p.corp:3128", "no_proxy": ["*.corp"]}, "egress_proxy.no_proxy.0:"),
        ({"url": "http://p.corp:3128", "no_proxy": ["h:x"]}, "bad port"),
        ({"url": "http://p.corp:3128", "no_proxy": ["10.0.0.0/33"]}, "not a CIDR block"),
        ({"url": "http://p.corp:3128", "password_file": "/nonexistent/pw", "username": "u"},
         "egress_proxy.password_file: file not found"),
    ],
)
def test_bad_blocks_name_the_field_and_the_fix(egress: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        validate_config(_config(egress))
    assert expected in str(caught.value)
    assert "pw@" not in str(caught.value)


def test_an_upstream_block_error_names_the_upstream() -> None:
    with pytest.raises(ConfigError) as caught:
        validate_config(_config(None, b={"url": "socks5://p:1080"}))
    assert "upstreams.b.egress_proxy.url" in str(caught.value)


def test_set_from_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        "upstreams:\n  a:\n    match: [a.example]\n    target: https://a.example\n"
        "    auth: {type: static, token: t}\n"
    )
    config = load_config(path, {"SIDECAR_EGRESS_PROXY__URL": "http://p.corp:3128"})
    egress = config.upstreams["a"].egress_proxy
    assert egress is not None and egress.url == "http://p.corp:3128"


def test_which_hosts_go_direct() -> None:
    egress = {"url": "http://p.corp:3128",
              "no_proxy": [".corp.local", "registry.example:8443", "10.0.0.0/8", "NCA.Bank"]}
    dialer = egress_dialer(validate_config(_config(egress)).upstreams["a"].egress_proxy)
    assert dialer is not None
    through = {
        ("api.moex.com", 443, True): True,
        ("corp.local", 443, True): False,
        ("idp.corp.local", 443, True): False,
        ("notcorp.local", 443, True): True,
        ("registry.example", 8443, True): False,
        ("registry.example", 443, True): True,
        ("10.20.30.40", 443, True): False,
        ("11.0.0.1", 443, True): True,
        ("nca.bank", 443, True): False,
        ("api.moex.com", 80, False): False,  # plain http:// goes direct unless plain_http
    }
    for (host, port, tls), tunnelled in through.items():
        assert (dialer.tunnel_for(host, port, tls) is not None) == tunnelled, (host, port)
    plain = egress_dialer(
        validate_config(_config({**egress, "plain_http": True})).upstreams["a"].egress_proxy
    )
    assert plain is not None and plain.tunnel_for("api.moex.com", 80, False) is not None
