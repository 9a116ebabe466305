"""/metrics after traffic of every kind: promtool accepts it and the counters match the traffic."""

from __future__ import annotations

import asyncio
import shutil
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sidecar.sandbox.servers import SandboxStack
from tests.helpers.sidecars import Kisc, SidecarFactory, proxy_url

NTB = "http://api.moex.com/ntb"
KISC = "http://ax.kisc.kz/etsfo/1.0.0/messages/"


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(scrape: dict[Any, float], name: str, **labels: str) -> float:
    return scrape.get((name, frozenset(labels.items())), 0.0)


async def test_metrics_after_every_kind_of_traffic(
    sandbox: SandboxStack, kisc: Kisc, make_sidecar: SidecarFactory,
    kisc_config: dict[str, Any],
) -> None:
    dead_idp = {
        "match": ["dead.example"], "target": sandbox.api_url, "eager": False,
        "tls": {"ca_file": str(sandbox.pki.ca_file)},
        "timeouts": {"token_wait": 2},
        "auth": {"type": "client_credentials", "token_url": "https://127.0.0.1:1/token",
                 "client_id": "c", "client_secret": "s"},
    }
    idle = {**dead_idp, "match": ["idle.example"]}  # lazy and never called
    sidecar = await make_sidecar(
        {"max_body": 4096},
        upstreams={"kisc": kisc_config, "dead": dead_idp, "idle": idle},
        passthrough=[],
    )
    proxy = proxy_url(sidecar)
    async with aiohttp.ClientSession() as session:

        async def call(method: str, url: str, **kw: Any) -> int:
            async with session.request(method, url, proxy=proxy, **kw) as resp:
                await resp.read()
                return resp.status

        assert [await call("GET", f"{NTB}/m/{i}") for i in range(5)] == [200] * 5
        assert await call("POST", f"{NTB}/m", data=b"x" * 1000) == 200
        assert await call("POST", f"{NTB}/m", data=b"x" * 5000) == 413
        sandbox.idp.revoke_sessions()
        assert await call("POST", f"{NTB}/replayed", data=b"y" * 100) == 200
        assert await call("GET", "http://nowhere.example/") == 403
        assert await call("POST", KISC, data=b"<Doc/>") == 400
        assert await call("POST", KISC, data=b"<Doc/>",
                          headers={"x-idempotency-key": "M-1"}) == 202
        assert await call("GET", "http://dead.example/x") == 503
        reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.proxy_port)
        writer.write(b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example\r\n\r\n")
        assert (await reader.read(100)).startswith(b"HTTP/1.1 403")
        writer.close()
        assert await call("TRACE", f"{NTB}/x") == 405
        async with session.get(f"http://127.0.0.1:{sidecar.admin_port}/metrics") as resp:
            assert resp.headers["Content-Type"].startswith("text/plain")
            text = await resp.text()

    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing: `make system-deps` installs it (Debian prometheus)")
    check = await asyncio.create_subprocess_exec(
        promtool, "check", "metrics", stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    said, _ = await check.communicate(text.encode())
    assert check.returncode == 0 and said == b"", said.decode()

    m = samples(text)
    assert value(m, "sidecar_requests_total", upstream="moex-ntb", method="GET", code="200") == 5
    assert value(m, "sidecar_requests_total", upstream="moex-ntb", method="POST", code="200") == 2
    assert value(m, "sidecar_requests_total", upstream="moex-ntb", method="POST", code="413") == 1
    assert value(m, "sidecar_requests_total", upstream="kisc", method="POST", code="202") == 1
    assert value(m, "sidecar_requests_total", upstream="dead", method="GET", code="503") == 1
    assert value(m, "sidecar_request_duration_seconds_count", upstream="moex-ntb") == 8
    assert value(m, "sidecar_request_body_bytes_total", upstream="moex-ntb") == 1100
    assert value(m, "sidecar_auth_replays_total", upstream="moex-ntb") == 1
    assert value(m, "sidecar_local_rejections_total", upstream="none", reason="unknown_host") == 1
    # Refused before routing: in the request series too, as the README says.
    assert value(m, "sidecar_requests_total", upstream="none", method="GET", code="403") == 1
    assert value(m, "sidecar_requests_total", upstream="none", method="CONNECT", code="403") == 1
    assert value(m, "sidecar_requests_total", upstream="none", method="other", code="405") == 1
    assert value(m, "sidecar_request_duration_seconds_count", upstream="none") == 3
    assert value(m, "sidecar_local_rejections_total", upstream="none",
                 reason="method_not_allowed") == 1
    assert value(m, "sidecar_local_rejections_total", upstream="none",
                 reason="connect_refused") == 1
    assert value(m, "sidecar_local_rejections_total", upstream="moex-ntb",
                 reason="body_too_large") == 1
    assert value(m, "sidecar_local_rejections_total", upstream="kisc",
                 reason="missing_header") == 1
    assert value(m, "sidecar_local_rejections_total", upstream="dead", reason="no_token") == 1
    assert value(m, "sidecar_token_fetch_total", upstream="moex-ntb", grant="password",
                 result="success") == 2
    assert value(m, "sidecar_token_fetch_total", upstream="moex-ntb", grant="refresh_token",
                 result="failure") == 1
    assert value(m, "sidecar_token_fetch_total", upstream="dead", grant="client_credentials",
                 result="failure") >= 1
    assert value(m, "sidecar_token_refresh_consecutive_failures", upstream="dead") >= 1
    assert value(m, "sidecar_token_expiry_timestamp_seconds", upstream="moex-ntb") > 1.7e9
    # A lazy upstream nobody called has no expiry series (a 0 would fire SidecarNoToken);
    # one that was called and failed reads 0.
    expiry = {labels for name, labels in m if name == "sidecar_token_expiry_timestamp_seconds"}
    assert frozenset({("upstream", "idle")}) not in expiry
    assert value(m, "sidecar_token_expiry_timestamp_seconds", upstream="dead") == 0
    assert frozenset({("upstream", "dead")}) in expiry
    assert "_created" not in text  # prometheus-client's creation-time series are off
    assert value(m, "sidecar_client_cert_expiry_timestamp_seconds", upstream="kisc") > 1.7e9
    assert value(m, "sidecar_upstream_inflight", upstream="moex-ntb") == 0
    assert value(m, "sidecar_build_info", version="0.1.0") == 1
    assert value(m, "sidecar_response_body_bytes_total", upstream="moex-ntb") > 0
    # Nothing the app made up became a label.
    assert "nowhere.example" not in text and "/ntb/m" not in text and "evil" not in text


def test_request_stats_are_prometheus_histograms_and_counters() -> None:
    """The lock-free per-request series expose as a real histogram: cumulative buckets with
    ``le`` inclusive, +Inf equal to the count, free-text methods folded into "other"."""
    from prometheus_client import generate_latest

    from sidecar.metrics import Metrics

    metrics = Metrics()
    moex = metrics.for_upstream("moex")
    assert metrics.for_upstream("moex") is moex  # one per name, across reloads
    moex.request_done("GET", 200, 0.005, 0, 7)  # exactly on a bound: counted in it
    moex.request_done("GET", 200, 0.0051, 3, 0)
    moex.request_done("BREW", 405, 99.0, 0, 0)  # past the last bound: only in +Inf
    m = samples(generate_latest(metrics.registry).decode())
    bucket = "sidecar_request_duration_seconds_bucket"
    assert value(m, bucket, upstream="moex", le="0.0025") == 0
    assert value(m, bucket, upstream="moex", le="0.005") == 1
    assert value(m, bucket, upstream="moex", le="0.01") == 2
    assert value(m, bucket, upstream="moex", le="60.0") == 2
    assert value(m, bucket, upstream="moex", le="+Inf") == 3
    assert value(m, "sidecar_request_duration_seconds_count", upstream="moex") == 3
    assert value(m, "sidecar_request_duration_seconds_sum", upstream="moex") == pytest.approx(
        99.0101)
    assert value(m, "sidecar_requests_total", upstream="moex", method="GET", code="200") == 2
    assert value(m, "sidecar_requests_total", upstream="moex", method="other", code="405") == 1
    assert value(m, "sidecar_request_body_bytes_total", upstream="moex") == 3
    assert value(m, "sidecar_response_body_bytes_total", upstream="moex") == 7


def test_every_grant_label_is_documented() -> None:
    """Each value the ``grant`` label takes (every flow's ``grant_type``, and the refresh
    grant) is named in the README's metrics table."""
    import importlib
    import inspect
    import pkgutil
    from pathlib import Path

    import sidecar.auth

    grants = {"refresh_token"}  # TokenManager._obtain's renewal
    for module_info in pkgutil.iter_modules(sidecar.auth.__path__):
        module = importlib.import_module(f"sidecar.auth.{module_info.name}")
        for _, cls in inspect.getmembers(module, inspect.isclass):
            login = getattr(cls, "login", None)
            if cls.__module__ == module.__name__ and login is not None and not getattr(
                    cls, "_is_protocol", False) and isinstance(getattr(cls, "grant_type", None),
                                                               str):
                grants.add(cls.grant_type)
    assert {"password", "client_credentials", "passport", "signin"} <= grants
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    [row] = [line for line in readme.splitlines()
             if line.startswith("| `sidecar_token_fetch_total` |")]
    missing = sorted(g for g in grants if f"`{g}`" not in row)
    assert not missing, f"grant label values missing from the README metrics table: {missing}"
