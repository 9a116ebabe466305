"""deploy/grafana/authsidecar.json against a real Prometheus: the Debian `prometheus` server
scrapes a sidecar under load every second, and every panel's query (Grafana's variables
filled in) returns data through Prometheus' HTTP API. The alert expressions are evaluated on
the same data: SidecarNoToken names the upstream whose IdP is down, not the lazy one nobody
called.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from sidecar.app import Sidecar
from sidecar.sandbox.servers import SandboxStack
from tests.helpers.sidecars import Kisc, SidecarFactory, proxy_url

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "grafana" / "authsidecar.json"
RULES = ROOT / "deploy" / "kubernetes" / "prometheusrule.yaml"
# What Grafana puts in for its variables: every upstream, and a window that covers the whole
# test (a few scrapes would let a stall of the loaded machine read as a zero rate).
VARIABLES = {"$__rate_interval": "30s", "$upstream": ".*", "${datasource}": "prometheus"}
NTB = "http://api.moex.com/ntb"
KISC = "http://ax.kisc.kz/etsfo/1.0.0/messages/"


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def queries() -> list[tuple[str, str]]:
    """(panel title, PromQL with the variables filled in) for every target of every panel."""
    out = []
    for panel in dashboard()["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for name, value in VARIABLES.items():
                expr = expr.replace(name, value)
            assert "$" not in expr, f"{panel['title']}: unknown variable in {expr}"
            out.append((panel["title"], expr))
    return out


def test_dashboard_is_well_formed() -> None:
    board = dashboard()
    panels = board["panels"]
    assert board["uid"] == "authsidecar" and board["title"]
    assert len({p["id"] for p in panels}) == len(panels)
    titles = {p["title"] for p in panels}
    assert {"Requests by status", "Latency percentiles", "Token time left",
            "IdP calls and failures", "Token replays", "Local refusals", "Rate-limit waits",
            "Client certificate days left"} <= titles
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["description"], panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(set(ref_ids)) == len(ref_ids), panel["title"]
        for target in panel["targets"]:
            # Every series is filtered by the upstream picker, and rates follow the zoom.
            assert 'upstream=~"$upstream"' in target["expr"], target["expr"]
            for window in re.findall(r"\[([^\]]+)\]", target["expr"]):
                assert window == "$__rate_interval", target["expr"]
    # No two panels overlap on Grafana's 24-column grid.
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        g = panel["gridPos"]
        assert g["x"] + g["w"] <= 24
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"])
                for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine, f"{panel['title']} overlaps another panel"
        cells |= mine


# -- against a real Prometheus -----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def until(check: Callable[[], Awaitable[bool]], seconds: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what}: not within {seconds:g} s")
        await asyncio.sleep(0.25)


class Prometheus:
    """`prometheus` on 127.0.0.1, scraping the sidecar's /metrics every second, with its
    TSDB in tmp_path; queried over its HTTP API (asynchronously: the sidecar under test
    serves its scrapes on this same event loop)."""

    def __init__(self, tmp_path: Path, admin_port: int) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.fail("prometheus is missing: `make system-deps` installs it (Debian prometheus)")
        self.port = free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s",
                       "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "authsidecar", "metrics_path": "/metrics",
                                "static_configs": [{"targets": [f"127.0.0.1:{admin_port}"]}]}],
        }), encoding="utf-8")
        self.log = tmp_path / "prometheus.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{self.port}"],
                stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
            )
        self.url = f"http://127.0.0.1:{self.port}"
        self.session = aiohttp.ClientSession()

    async def ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"prometheus exited: {self.log.read_text()[-2000:]}")
        with contextlib.suppress(aiohttp.ClientError):
            async with self.session.get(f"{self.url}/-/ready") as r:
                return r.status == 200
        return False

    async def query(self, expr: str) -> list[dict[str, Any]]:
        async with self.session.get(f"{self.url}/api/v1/query", params={"query": expr}) as r:
            body = await r.json()
        assert body["status"] == "success", f"{expr}: {body}"
        assert body["data"]["resultType"] == "vector", expr
        return list(body["data"]["result"])

    async def label_values(self, label: str, metric: str) -> list[str]:
        async with self.session.get(f"{self.url}/api/v1/label/{label}/values",
                                    params={"match[]": metric}) as r:
            body = await r.json()
        assert body["status"] == "success", body
        return list(body["data"])

    async def stop(self) -> None:
        await self.session.close()
        self.process.terminate()
        try:
            await asyncio.to_thread(self.process.wait, 20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture
async def load_sidecar(
    sandbox: SandboxStack, kisc: Kisc, make_sidecar: SidecarFactory, kisc_config: dict[str, Any]
) -> Sidecar:
    """moex-ntb rate-limited, kisc with a client certificate, an eager upstream whose IdP is
    down, and a lazy one nobody calls."""
    dead = {
        "match": ["dead.example"], "target": sandbox.api_url, "eager": True,
        "tls": {"ca_file": str(sandbox.pki.ca_file)},
        "auth": {"type": "client_credentials", "token_url": "https://127.0.0.1:1/token",
                 "client_id": "c", "client_secret": "s", "backoff_cap": 1},
    }
    idle = {**dead, "match": ["idle.example"], "eager": False}
    return await make_sidecar(
        {"rate_limit": {"rps": 100, "burst": 2, "max_wait": 5}},
        upstreams={"kisc": kisc_config, "dead": dead, "idle": idle},
        passthrough=[],
    )


@pytest.fixture
async def prometheus(load_sidecar: Sidecar, tmp_path: Path) -> AsyncIterator[Prometheus]:
    server = Prometheus(tmp_path, load_sidecar.admin_port)
    try:
        await until(server.ready, 20, "prometheus ready")
        yield server
    finally:
        await server.stop()


async def traffic(sidecar: Sidecar, sandbox: SandboxStack, stop: asyncio.Event) -> int:
    """Requests of every kind until ``stop``: the number sent."""
    sent = 0
    proxy = proxy_url(sidecar)
    async with aiohttp.ClientSession() as session:

        async def call(method: str, url: str, **kw: Any) -> None:
            nonlocal sent
            async with session.request(method, url, proxy=proxy, **kw) as resp:
                await resp.read()
            sent += 1

        async def ntb_loop() -> None:
            while not stop.is_set():
                await call("GET", f"{NTB}/hello")
                await call("POST", f"{NTB}/echo", data=b"x" * 200)

        async def others() -> None:
            rounds = 0
            while not stop.is_set():
                if rounds % 5 == 2:
                    sandbox.idp.revoke_sessions()  # the next NTB request is replayed
                await call("POST", KISC, data=b"<Doc/>", headers={"x-idempotency-key": "M-1"})
                await call("GET", "http://nowhere.example/")  # 403 unknown_host
                await call("GET", "http://dead.example/x")  # 503 no_token
                await asyncio.sleep(0.2)
                rounds += 1

        await asyncio.gather(ntb_loop(), ntb_loop(), ntb_loop(), others())
    return sent


async def test_every_panel_returns_data_from_a_real_prometheus(
    load_sidecar: Sidecar, prometheus: Prometheus, sandbox: SandboxStack,
) -> None:
    stop = asyncio.Event()
    load = asyncio.create_task(traffic(load_sidecar, sandbox, stop))
    try:
        async def scraped_enough() -> bool:
            # A few scrapes with traffic in them, so that every rate() window has two samples.
            if load.done():
                load.result()
            up = await prometheus.query("count_over_time(up[10s])")
            return bool(up) and float(up[0]["value"][1]) >= 5

        await until(scraped_enough, 30, "five scrapes of the sidecar")
        results = {expr: await prometheus.query(expr) for _, expr in queries()}
        upstreams = await prometheus.label_values("upstream", "sidecar_requests_total")
        alerts = {rule["alert"]: await prometheus.query(rule["expr"])
                  for group in yaml.safe_load(RULES.read_text(encoding="utf-8"))["spec"]["groups"]
                  for rule in group["rules"]}
    finally:
        stop.set()
        sent = await load
    assert sent > 50

    for title, expr in queries():
        result = results[expr]
        assert result, f"{title}: no data for {expr}"
        values = [float(r["value"][1]) for r in result]
        assert any(math.isfinite(v) for v in values), f"{title}: {expr} gave {values}"

    def series(title: str, **labels: str) -> list[float]:
        """Values of the panel's series that carry these labels (any of its queries)."""
        return [float(r["value"][1]) for t, expr in queries() if t == title
                for r in results[expr] if labels.items() <= r["metric"].items()]

    assert max(series("Requests by status", upstream="moex-ntb", code="200")) > 0
    assert series("Requests by status", upstream="none", code="403")
    assert series("Local refusals", upstream="none", reason="unknown_host")
    assert series("Local refusals", upstream="dead", reason="no_token")
    assert series("IdP calls and failures", upstream="dead", result="failure")
    assert series("IdP calls and failures", upstream="moex-ntb", result="success")
    assert min(series("Token time left", upstream="moex-ntb")) > 0
    assert max(series("Token time left", upstream="dead")) < 0
    assert not series("Token time left", upstream="idle")  # lazy, never called
    assert series("Token replays", upstream="moex-ntb")
    assert all(math.isfinite(v) for v in series("Rate-limit waits", upstream="moex-ntb"))
    [days] = series("Client certificate days left", upstream="kisc")
    assert 1 < days < 3700
    # The upstream picker's query (label_values) offers every upstream that had traffic.
    assert {"moex-ntb", "kisc", "dead", "none"} <= set(upstreams)

    # SidecarNoToken: the IdP-down upstream, never the lazy one nobody called.
    assert {r["metric"]["upstream"] for r in alerts["SidecarNoToken"]} == {"dead"}
    assert not alerts["SidecarClientCertExpiresSoon"]
