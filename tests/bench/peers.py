"""The benchmark's cast: PKI, the helper services, the upstream nginx and the proxies.

Every config is a template in ``templates/`` with ``{{name}}`` placeholders, rendered into
the run folder. Every proxy listens on a free port of 127.0.0.1 and runs pinned to the
proxy CPU; the upstream and the helper run on the load CPUs.
"""

from __future__ import annotations

import json
import re
import socket
import ssl
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sidecar.sandbox.pki import Pki
from tests.bench.install import Tools
from tests.bench.procs import Pinning, Procs, free_port, http_status, wait_until
from tests.bench.services import CLIENT_ID, CLIENT_SECRET

__all__ = [
    "HOST",
    "SMALL_BODY",
    "HeyLoad",
    "Layout",
    "Peer",
    "Services",
    "direct",
    "fetch",
    "make_pki",
    "render",
    "start_envoy",
    "start_nginx_proxy",
    "start_proxypy",
    "start_sidecar",
    "start_upstream",
]

HOST = "api.bench.test"
SMALL_BODY = "ok: a small fixed answer from the benchmark upstream, 64 bytes\n"
CHECKOUT = Path(__file__).resolve().parents[2]
TEMPLATES = Path(__file__).parent / "templates"
PLUGINS = Path(__file__).parent / "plugins"
_START_TIMEOUT = 30.0


@dataclass(frozen=True)
class Layout:
    """Where one run keeps its files (all under ``.bench/run``, wiped at the start)."""

    run: Path

    @property
    def pki(self) -> Path:
        return self.run / "pki"

    @property
    def files(self) -> Path:
        return self.run / "files"

    @property
    def logs(self) -> Path:
        return self.run / "logs"

    @property
    def configs(self) -> Path:
        return self.run / "configs"

    def create(self) -> None:
        for path in (self.pki, self.files, self.logs, self.configs, self.run / "tmp"):
            path.mkdir(parents=True, exist_ok=True)

    def transfer_file(self, size: int) -> Path:
        """A sparse file of ``size`` bytes, served for downloads and read for uploads."""
        path = self.files / f"{size}.bin"
        if not path.exists() or path.stat().st_size != size:
            with open(path, "wb") as fh:
                fh.truncate(size)
            # Read it once, so that no row pays for filling the page cache.
            with open(path, "rb") as fh:
                while fh.read(1024 * 1024):
                    pass
        return path


def render(template: str, out: Path, **values: object) -> Path:
    """Fill ``{{name}}`` placeholders of a template; every one must have a value."""

    def value(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in values:
            raise KeyError(f"{template}: no value for {{{{{key}}}}}")
        return str(values[key])

    out.write_text(re.sub(r"\{\{(\w+)\}\}", value, (TEMPLATES / template).read_text()))
    return out


def make_pki(directory: Path) -> None:
    """CA, server certificates of the IdP and the upstream, the proxies' client certificate."""
    pki = Pki(directory, name="authsidecar bench CA")
    pki.issue_server("idp", ("127.0.0.1", "localhost"))
    pki.issue_server("api", (HOST, "127.0.0.1", "localhost"))
    pki.issue_client("client", "bench-client")


def _tls_context(layout: Layout) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(layout.pki / "ca.crt"))


def fetch(
    url: str, *, proxy: str | None = None, authorization: str | None = None
) -> tuple[int | None, str]:
    """GET ``url`` (through a forward proxy if given): the status and the body."""
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({"http": proxy} if proxy else {})
    )
    request = urllib.request.Request(url)
    if authorization:
        request.add_header("Authorization", authorization)
    try:
        with opener.open(request, timeout=5) as response:
            return int(response.status), response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode("utf-8", "replace")
    except (OSError, ValueError) as exc:
        return None, str(exc)


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _check_alive(proc: subprocess.Popen[bytes], name: str, log: Path) -> None:
    if proc.poll() is not None:
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise RuntimeError(f"{name} exited with {proc.returncode} at start:\n{tail}")


class Services:
    """The helper process: IdP, token-checking upstream and upload sink (services.py)."""

    def __init__(self, procs: Procs, layout: Layout) -> None:
        self.layout = layout
        ports_file = layout.run / "services.json"
        ports_file.unlink(missing_ok=True)
        self.proc = procs.start(
            "services",
            [sys.executable, "-m", "tests.bench.services", "--dir", str(layout.run),
             "--pki", str(layout.pki)],
            cwd=CHECKOUT,
        )

        def ready() -> bool:
            _check_alive(self.proc, "services", layout.logs / "services.log")
            return ports_file.exists()

        wait_until(ready, _START_TIMEOUT, "the IdP helper")
        ports = json.loads(ports_file.read_text())
        self.idp_port: int = ports["idp"]
        self.check_port: int = ports["check"]
        self.sink_port: int = ports["sink"]
        self.token_url = f"https://127.0.0.1:{self.idp_port}{ports['token_path']}"
        self._ctx = _tls_context(layout)

    def _call(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"https://127.0.0.1:{self.idp_port}{path}",
            data=data,
            headers={"Content-Type": "application/json"} if data else {},
            method="POST" if data is not None or path.endswith("/reset") else "GET",
        )
        with urllib.request.urlopen(request, context=self._ctx, timeout=10) as response:
            result: dict[str, Any] = json.loads(response.read())
            return result

    def set_token_ttl(self, seconds: float) -> None:
        self._call("/_sandbox/settings", {"access_ttl": seconds})

    def reset_stats(self) -> None:
        self._call("/_sandbox/stats/reset")

    def token_calls(self) -> int:
        return int(self._call("/_sandbox/stats")["calls"])

    def fetch_token(self) -> str:
        """A bearer token for the rows that send a static one (direct, nginx, proxy.py)."""
        form = urllib.parse.urlencode(
            {"grant_type": "client_credentials", "client_id": CLIENT_ID,
             "client_secret": CLIENT_SECRET}
        ).encode()
        with urllib.request.urlopen(self.token_url, data=form, context=self._ctx,
                                    timeout=10) as response:
            return str(json.loads(response.read())["access_token"])


@dataclass
class Upstream:
    proc: subprocess.Popen[bytes]
    plain_port: int
    tls_port: int

    @property
    def pid(self) -> int:
        return self.proc.pid


def start_upstream(
    procs: Procs, layout: Layout, tools: Tools, pinning: Pinning, sink_port: int
) -> Upstream:
    plain_port, tls_port = free_port(), free_port()
    conf = render(
        "nginx-upstream.conf", layout.configs / "nginx-upstream.conf",
        run=layout.run, pki=layout.pki, plain_port=plain_port, tls_port=tls_port,
        sink_port=sink_port,
    )
    proc = procs.start(
        "upstream",
        [*pinning.taskset(pinning.load), tools.nginx, "-p", str(layout.run), "-c", str(conf),
         "-e", str(layout.logs / "upstream-start.log")],
    )

    def ready() -> bool:
        _check_alive(proc, "upstream nginx", layout.logs / "upstream.log")
        # 403: it answers, and refuses a request without a token.
        return http_status(f"http://127.0.0.1:{plain_port}/small") == 403 and _port_open(
            tls_port
        )

    wait_until(ready, _START_TIMEOUT, "the upstream nginx")
    return Upstream(proc, plain_port, tls_port)


@dataclass(frozen=True)
class HeyLoad:
    """How hey drives a row whose app speaks TLS (see ``measure.run_hey``)."""

    url: str
    proxy: str | None  # URL of the forward proxy that gets the CONNECT
    host: str | None  # Host header and SNI


@dataclass
class Peer:
    """One row's server: ``url`` is where wrk and curl connect (or ``hey`` says how)."""

    name: str
    url: str
    forward: bool  # a forward proxy (absolute-form requests) or the upstream itself
    proc: subprocess.Popen[bytes] | None
    measured_pid: int | None  # whose process tree the CPU and RSS columns are
    authorization: str = ""  # what the client sends itself (the direct row only)
    expect: str = SMALL_BODY  # the body of a good answer to GET /small
    hey: HeyLoad | None = None  # loaded by hey instead of wrk
    transfers: bool = True  # the upload and download rows (the main rows only)
    probe: Callable[[], tuple[int | None, str]] | None = None  # replaces ``get`` when set

    def target(self, path: str) -> str:
        """The request target wrk and curl use: absolute-form through a proxy."""
        return f"http://{HOST}{path}" if self.forward else path

    def get(self, path: str) -> tuple[int | None, str]:
        if self.probe is not None:
            return self.probe()
        if self.forward:
            return fetch(self.target(path), proxy=self.url)
        return fetch(self.url + path, authorization=self.authorization)


def _wait_serving(peer: Peer, layout: Layout, timeout: float = _START_TIMEOUT) -> None:
    """Until the small GET through ``peer`` comes back 200 with the upstream's body."""
    last: tuple[int | None, str] = (None, "")

    def ready() -> bool:
        nonlocal last
        if peer.proc is not None:
            _check_alive(peer.proc, peer.name, layout.logs / f"{peer.name}.log")
        last = peer.get("/small")
        return last == (200, peer.expect)

    try:
        wait_until(ready, timeout, f"{peer.name} to answer 200", interval=0.2)
    except TimeoutError as exc:
        raise TimeoutError(f"{exc}; last answer: {last[0]} {last[1][:200]!r}") from None


def _serving(procs: Procs, peer: Peer, layout: Layout) -> Peer:
    """``peer`` once it answers; a peer that never does is stopped before the error goes up."""
    try:
        _wait_serving(peer, layout)
    except BaseException:
        if peer.proc is not None:
            procs.stop(peer.proc)
        raise
    return peer


def direct(upstream: Upstream, authorization: str, layout: Layout) -> Peer:
    peer = Peer("direct", f"http://127.0.0.1:{upstream.plain_port}", False, None, None,
                authorization)
    _wait_serving(peer, layout)
    return peer


def start_nginx_proxy(
    procs: Procs, layout: Layout, tools: Tools, pinning: Pinning, upstream: Upstream,
    authorization: str,
) -> Peer:
    port = free_port()
    conf = render(
        "nginx-proxy.conf", layout.configs / "nginx-proxy.conf",
        run=layout.run, pki=layout.pki, port=port, tls_port=upstream.tls_port,
        authorization=authorization,
    )
    proc = procs.start(
        "nginx",
        [*pinning.taskset(pinning.proxy), tools.nginx, "-p", str(layout.run), "-c", str(conf),
         "-e", str(layout.logs / "nginx-start.log")],
    )
    return _serving(procs, Peer("nginx", f"http://127.0.0.1:{port}", True, proc, proc.pid),
                    layout)


def start_envoy(
    procs: Procs, layout: Layout, tools: Tools, pinning: Pinning, services: Services,
    api_port: int, name: str = "envoy", expect: str = SMALL_BODY,
    listener_tls: str = "null", shape: Callable[[Peer], None] | None = None,
) -> Peer:
    """Envoy as a forward proxy; with ``listener_tls`` (a transport_socket in flow YAML) it
    terminates the app's TLS, and ``shape`` says how that row is loaded and probed."""
    port = free_port()
    conf = render(
        "envoy.yaml", layout.configs / f"{name}.yaml",
        pki=layout.pki, port=port, admin_port=free_port(), api_port=api_port,
        idp_port=services.idp_port, token_url=services.token_url, client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET, listener_tls=listener_tls,
    )
    proc = procs.start(
        name,
        [*pinning.taskset(pinning.proxy), str(tools.envoy), "-c", str(conf),
         "--concurrency", "1", "--disable-hot-restart", "--log-level", "warn"],
    )
    peer = Peer(name, f"http://127.0.0.1:{port}", True, proc, proc.pid, expect=expect)
    if shape is not None:
        shape(peer)
    return _serving(procs, peer, layout)


def start_proxypy(
    procs: Procs, layout: Layout, tools: Tools, pinning: Pinning, upstream: Upstream,
    authorization: str,
) -> Peer:
    port = free_port()
    proc = procs.start(
        "proxy.py",
        [*pinning.taskset(pinning.proxy), str(tools.proxypy_python), "-m", "proxy",
         "--hostname", "127.0.0.1", "--port", str(port), "--backlog", "4096",
         "--num-acceptors", "1", "--num-workers", "1", "--log-level", "WARNING",
         "--plugins", "proxypy_bench.BenchAuthPlugin"],
        env={
            "PYTHONPATH": str(PLUGINS),
            "BENCH_AUTHORIZATION": authorization,
            "BENCH_UPSTREAM": f"127.0.0.1:{upstream.plain_port}",
        },
    )
    return _serving(procs, Peer("proxy.py", f"http://127.0.0.1:{port}", True, proc, proc.pid),
                    layout)


def start_sidecar(
    procs: Procs, layout: Layout, pinning: Pinning, services: Services, api_port: int,
    name: str = "sidecar", expect: str = SMALL_BODY, extra: str = "",
    shape: Callable[[Peer], None] | None = None,
) -> Peer:
    """``sidecar run``; ``extra`` is top-level YAML added to its config (a store, an
    interception CA), ``shape`` says how a variant row is loaded and probed."""
    port, admin_port = free_port(), free_port()
    conf = render(
        "sidecar.yaml", layout.configs / f"{name}.yaml",
        pki=layout.pki, port=port, admin_port=admin_port, api_port=api_port,
        token_url=services.token_url, client_id=CLIENT_ID, client_secret=CLIENT_SECRET,
        extra=extra,
    )
    sidecar = Path(sys.executable).parent / "sidecar"
    proc = procs.start(
        name, [*pinning.taskset(pinning.proxy), str(sidecar), "run", "--config", str(conf)],
        # The sidecar of this checkout, whatever the venv's editable install points at.
        env={"PYTHONPATH": str(CHECKOUT)},
    )

    def ready() -> bool:
        _check_alive(proc, name, layout.logs / f"{name}.log")
        return http_status(f"http://127.0.0.1:{admin_port}/readyz") == 200

    peer = Peer(name, f"http://127.0.0.1:{port}", True, proc, proc.pid, expect=expect)
    if shape is not None:
        shape(peer)
    try:
        wait_until(ready, _START_TIMEOUT, f"{name} /readyz")
    except BaseException:
        procs.stop(proc)
        raise
    return _serving(procs, peer, layout)
