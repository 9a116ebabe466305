"""``make bench`` / ``make bench-smoke``: the sidecar side by side with its peers.

    python -m tests.bench.run [--smoke] [--out .bench]

Rows, each with one process or worker:

- **direct:** wrk to the upstream itself, sending the token (the load side's own limit);
- **nginx:** reverse proxy with a static Authorization header and mTLS over a keep-alive
  pool (the near-physical limit of the job);
- **envoy:** Envoy 1.40, credential_injector with an OAuth2 client_credentials token from
  the bench IdP, mTLS (the peer that does the same job);
- **proxy.py:** forward proxy with a plugin that sets the header (the Python peer; no TLS
  to the upstream, see plugins/proxypy_bench.py);
- **sidecar:** ``sidecar run``, forward proxy, client_credentials, mTLS;
- **sidecar, redis store:** the same with the shared store on a real ``redis-server``;
- **sidecar, interception** and **envoy, TLS from the app:** the app speaks TLS (through a
  CONNECT to the sidecar, straight to Envoy), with leaves from one CA; hey loads these two,
  as wrk cannot CONNECT (see variants.py).

All of them run at once (the idle ones cost nothing) and take the c=32 and the c=1 load in
interleaved rounds, so that on a shared machine every row meets the same disturbances.
For each: req/s, latencies (medians of the rounds), the proxy's CPU per request and RSS,
and an upload and a download streamed through with curl. Then a token-churn run for the
sidecar and Envoy.
The exit status is 1 when a row produced no numbers or a row other than churn saw errors;
timings never fail a run.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NoReturn

from tests.bench import install, report
from tests.bench.measure import (
    MemoryWatch,
    WrkResult,
    cpu_seconds,
    curl_transfer,
    descendants,
    rss_bytes,
    run_hey,
    run_wrk,
)
from tests.bench.peers import (
    TEMPLATES,
    Layout,
    Peer,
    Services,
    Upstream,
    direct,
    make_pki,
    start_envoy,
    start_nginx_proxy,
    start_proxypy,
    start_sidecar,
    start_upstream,
)
from tests.bench.procs import Pinning, Procs
from tests.bench.variants import Redis, TlsRows, start_sidecar_redis

ROOT = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024
_LONG_TTL = 3600.0


@dataclass(frozen=True)
class Settings:
    mode: str
    duration: float  # the measured c=32 window of each row
    warmup: float  # c=32 load before it, not measured
    c1_duration: float
    churn_duration: float
    transfer_size: int
    transfer_budget: float  # seconds a transfer may take before it is stopped
    rounds: int  # the c=32 and c=1 loads are split into this many interleaved rounds
    connections: int = 32
    churn_ttl: float = 2.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "transfer_mib": self.transfer_size / MIB}


FULL = Settings("full", duration=15, warmup=3, c1_duration=6, churn_duration=30,
                transfer_size=1024 * MIB, transfer_budget=120, rounds=3)
SMOKE = Settings("smoke", duration=2, warmup=1, c1_duration=2, churn_duration=5,
                 transfer_size=64 * MIB, transfer_budget=60, rounds=1)


def _log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


class Bench:
    def __init__(
        self, settings: Settings, tools: install.Tools, pinning: Pinning, layout: Layout,
        procs: Procs,
    ) -> None:
        self.s = settings
        self.tools = tools
        self.pinning = pinning
        self.layout = layout
        self.procs = procs
        self.script = TEMPLATES / "wrk.lua"

    # -- one measurement ---------------------------------------------------------------

    def wrk(self, peer: Peer, connections: int, duration: float) -> WrkResult:
        """One load run: wrk, or hey for the rows whose app speaks TLS."""
        if peer.hey is not None:
            return run_hey(self.procs, url=peer.hey.url, proxy=peer.hey.proxy,
                           host=peer.hey.host, connections=connections, duration=duration,
                           taskset=self.pinning.taskset(self.pinning.load))
        return run_wrk(
            self.procs,
            script=self.script,
            url=peer.url,
            target=peer.target("/small"),
            authorization=peer.authorization,
            connections=connections,
            duration=duration,
            taskset=self.pinning.taskset(self.pinning.load),
        )

    def transfer(self, peer: Peer, direction: str) -> dict[str, Any]:
        size = self.s.transfer_size
        path = "/upload" if direction == "upload" else f"/files/{size}.bin"
        result = curl_transfer(
            self.procs,
            direction=direction,
            url=peer.target(path) if peer.forward else peer.url + path,
            size=size,
            upload_file=self.layout.transfer_file(size),
            proxy=peer.url if peer.forward else None,
            authorization=peer.authorization or None,
            proxy_pid=peer.measured_pid,
            taskset=self.pinning.taskset(self.pinning.load),
            budget=self.s.transfer_budget,
        )
        return result.as_dict()

    # -- rows ------------------------------------------------------------------------------

    def window(self, peer: Peer, connections: int, seconds: float, upstream: Upstream) -> Window:
        """One wrk run, with the proxy's CPU time and peak RSS and the upstream's CPU time."""
        pid = peer.measured_pid
        tree = descendants(pid) if pid is not None else []
        cpu_before = cpu_seconds(tree)
        upstream_before = cpu_seconds([upstream.pid])
        with MemoryWatch(pid) if pid is not None else _no_watch() as watch:
            result = self.wrk(peer, connections, seconds)
        cpu = None
        if pid is not None:
            tree = sorted(set(tree) | set(descendants(pid)))
            cpu = cpu_seconds(tree) - cpu_before
        return Window(result, cpu, cpu_seconds([upstream.pid]) - upstream_before,
                      watch.peak if watch else None)

    def interleaved(
        self, peers: dict[str, Peer], rows: dict[str, dict[str, Any]], key: str,
        connections: int, seconds: float, upstream: Upstream,
    ) -> None:
        """``seconds`` of load for each peer, in rounds, the order rotating each round.

        Rows measured one after another meet whatever else the machine does at that
        moment; in rounds they share it. Latencies are the medians of the rounds.
        """
        rounds = self.s.rounds
        per_round = max(1, round(seconds / rounds))
        windows: dict[str, list[Window]] = {name: [] for name in peers}
        names = list(peers)
        for index in range(rounds):
            shift = index % len(names) if names else 0
            for name in names[shift:] + names[:shift]:
                if name not in peers:
                    continue
                _log(f"{name}: c={connections}, round {index + 1} of {rounds}, {per_round} s")
                try:
                    windows[name].append(self.window(peers[name], connections, per_round,
                                                     upstream))
                except Exception as exc:
                    self._fail(rows[name], exc)
                    self.procs_stop(peers.pop(name))
        for name, measured in windows.items():
            if measured and "error" not in rows[name]:
                _aggregate(rows[name], key, measured)

    def procs_stop(self, peer: Peer) -> None:
        if peer.proc is not None:
            self.procs.stop(peer.proc)

    def _fail(self, row: dict[str, Any], exc: Exception) -> None:
        row["error"] = f"{type(exc).__name__}: {exc}"
        _log(f"{row['name']}: failed: {row['error']}")

    def rows(
        self, starters: list[tuple[str, Callable[[], Peer]]], upstream: Upstream
    ) -> list[dict[str, Any]]:
        """Start every peer, load them in interleaved rounds, then stream through each."""
        rows: dict[str, dict[str, Any]] = {name: {"name": name} for name, _ in starters}
        peers: dict[str, Peer] = {}
        try:
            for name, start in starters:
                _log(f"{name}: starting")
                try:
                    peer = start()
                except Exception as exc:
                    self._fail(rows[name], exc)
                    continue
                peers[name] = peer
                rows[name]["load_tool"] = "hey" if peer.hey else "wrk"
                if peer.measured_pid is not None:
                    # Idle: after start and the first token, before any load.
                    rows[name]["rss_idle"] = rss_bytes(descendants(peer.measured_pid))
            for name in list(peers):
                _log(f"{name}: warm-up, c={self.s.connections} for {self.s.warmup:g} s")
                try:
                    self.wrk(peers[name], self.s.connections, self.s.warmup)
                except Exception as exc:
                    self._fail(rows[name], exc)
                    self.procs_stop(peers.pop(name))
            self.interleaved(peers, rows, "load", self.s.connections, self.s.duration, upstream)
            self.interleaved(peers, rows, "c1", 1, self.s.c1_duration, upstream)
            for name, peer in peers.items():
                row = rows[name]
                for direction in ("upload", "download") if peer.transfers else ():
                    _log(f"{name}: {direction} of {self.s.transfer_size // MIB} MiB")
                    try:
                        row[direction] = self.transfer(peer, direction)
                    except Exception as exc:
                        self._fail(row, exc)
                        break
                    if row[direction]["error"]:
                        _log(f"{name}: {direction} failed: {row[direction]['error']}")
                    elif not row[direction]["complete"]:
                        _log(f"{name}: {direction} stopped after "
                             f"{self.s.transfer_budget:g} s")
        finally:
            for peer in peers.values():
                self.procs_stop(peer)
        base = rows.get("direct", {}).get("c1")
        for row in rows.values():
            c1 = row.get("c1")
            if base and c1 and row.get("load_tool") == "wrk":  # the same load tool as direct
                row["c1_added_p50_ms"] = c1["p50_ms"] - base["p50_ms"]
                row["c1_added_p99_ms"] = c1["p99_ms"] - base["p99_ms"]
        return list(rows.values())

    def churn(self, name: str, start: Callable[[], Peer], services: Services) -> dict[str, Any]:
        row: dict[str, Any] = {"name": name}
        peer: Peer | None = None
        try:
            _log(f"{name}: token churn, {self.s.churn_duration:g} s")
            peer = start()
            services.reset_stats()
            load = self.wrk(peer, self.s.connections, self.s.churn_duration)
            row.update(
                rps=load.rps, requests=load.requests, errors=load.errors, non2xx=load.non2xx,
                socket_errors=load.socket_errors, idp_calls=services.token_calls(),
                load=load.as_dict(),
            )
            _log(f"{name}: churn {load.errors} errors, {row['idp_calls']} IdP calls")
        except Exception as exc:
            row["error"] = f"{type(exc).__name__}: {exc}"
            _log(f"{name}: churn failed: {row['error']}")
        finally:
            if peer is not None and peer.proc is not None:
                self.procs.stop(peer.proc)
        return row

    # -- the whole run ---------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        started = dt.datetime.now(dt.UTC)
        layout, procs, tools, pin = self.layout, self.procs, self.tools, self.pinning
        make_pki(layout.pki)
        services = Services(procs, layout)
        upstream = start_upstream(procs, layout, tools, pin, services.sink_port)
        authorization = f"Bearer {services.fetch_token()}"
        layout.transfer_file(self.s.transfer_size)
        redis = Redis(procs, layout, tools, pin)
        tls = TlsRows(procs, layout, tools, pin, services, upstream.tls_port)

        starters: list[tuple[str, Callable[[], Peer]]] = [
            ("direct", lambda: direct(upstream, authorization, layout)),
            ("nginx", lambda: start_nginx_proxy(procs, layout, tools, pin, upstream,
                                                authorization)),
            ("envoy", lambda: start_envoy(procs, layout, tools, pin, services,
                                          upstream.tls_port)),
            ("proxy.py", lambda: start_proxypy(procs, layout, tools, pin, upstream,
                                               authorization)),
            ("sidecar", lambda: start_sidecar(procs, layout, pin, services, upstream.tls_port)),
            ("sidecar, redis store", lambda: start_sidecar_redis(
                procs, layout, pin, services, upstream.tls_port, redis)),
            ("sidecar, interception", tls.sidecar),
            ("envoy, TLS from the app", tls.envoy),
        ]
        rows = self.rows(starters, upstream)

        services.set_token_ttl(self.s.churn_ttl)
        try:
            churn = [
                self.churn("sidecar", lambda: start_sidecar(
                    procs, layout, pin, services, services.check_port, name="sidecar-churn",
                    expect="ok\n"), services),
                self.churn("envoy", lambda: start_envoy(
                    procs, layout, tools, pin, services, services.check_port,
                    name="envoy-churn", expect="ok\n"), services),
            ]
        finally:
            services.set_token_ttl(_LONG_TTL)

        return {
            "mode": self.s.mode,
            "date": started.strftime("%Y-%m-%d %H:%M UTC"),
            "stamp": started.strftime("%Y%m%dT%H%M%SZ"),
            "code": _code_version(),
            "machine": _machine(),
            "versions": _versions(tools),
            "pinning": pin.describe(),
            "settings": self.s.as_dict(),
            "rows": rows,
            "churn": churn,
            "targets": report.targets(rows),
            "problems": _problems(rows, churn),
        }


@dataclass
class Window:
    """One wrk run with what the proxy (and the upstream) spent on it."""

    wrk: WrkResult
    cpu: float | None  # seconds of the proxy's process tree; None for the direct row
    upstream_cpu: float
    peak_rss: int | None


def _aggregate(row: dict[str, Any], key: str, windows: list[Window]) -> None:
    """Sum the counts of the rounds, take the medians of their latencies."""
    requests = sum(w.wrk.requests for w in windows)
    seconds = sum(w.wrk.duration_s for w in windows)

    def median(field: str) -> float:
        return float(statistics.median(getattr(w.wrk, field) for w in windows))

    row[key] = {
        "connections": windows[0].wrk.connections,
        "rounds": len(windows),
        "duration_s": round(seconds, 3),
        "requests": requests,
        "rps": requests / seconds if seconds else 0.0,
        "p50_ms": median("p50_ms"),
        "p90_ms": median("p90_ms"),
        "p99_ms": median("p99_ms"),
        "max_ms": max(w.wrk.max_ms for w in windows),
        "non2xx": sum(w.wrk.non2xx for w in windows),
        "socket_errors": sum(w.wrk.socket_errors for w in windows),
        "per_round": [w.wrk.as_dict() for w in windows],
    }
    if key != "load":
        return
    per_request = max(requests, 1)
    cpu = [w.cpu for w in windows if w.cpu is not None]
    if cpu:
        row["cpu_us_per_req"] = sum(cpu) / per_request * 1e6
        # About 100 % when the proxy saturates its CPU; less while it waits on the load
        # side, or when something else on the machine takes the CPU.
        row["cpu_percent"] = sum(cpu) / seconds * 100 if seconds else None
        row["rss_peak"] = max(w.peak_rss or 0 for w in windows)
    row["upstream_cpu_us_per_req"] = sum(w.upstream_cpu for w in windows) / per_request * 1e6


@contextlib.contextmanager
def _no_watch() -> Iterator[None]:
    yield None


def _problems(rows: list[dict[str, Any]], churn: list[dict[str, Any]]) -> list[str]:
    """What makes the run fail: no numbers from a row, or errors outside the churn rows."""
    problems = []
    for row in rows:
        name = row["name"]
        if row.get("error"):
            problems.append(f"{name}: {row['error']}")
        for key in ("load", "c1"):
            result = row.get(key)
            if result and result["non2xx"] + result["socket_errors"]:
                problems.append(
                    f"{name}: {key} saw {result['non2xx']} non-2xx responses and "
                    f"{result['socket_errors']} socket errors"
                )
        for key in ("upload", "download"):
            transfer = row.get(key)
            if transfer and transfer.get("error"):
                problems.append(f"{name}: {key} failed: {transfer['error']}")
    problems += [f"{r['name']} churn: {r['error']}" for r in churn if r.get("error")]
    return problems


def _output(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout + done.stderr


def _version(text: str, pattern: str = r"(\d+\.\d+(?:\.\d+)?)") -> str:
    match = re.search(pattern, text)
    return match.group(1) if match else "unknown"


def _dist_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _versions(tools: install.Tools) -> dict[str, str]:
    from sidecar import __version__

    proxypy = _output([str(tools.proxypy_python), "-c",
                       "import importlib.metadata as m; print(m.version('proxy.py'))"])
    return {
        "sidecar": __version__,
        "nginx": _version(_output([tools.nginx, "-v"]), r"nginx/(\S+)"),
        "envoy": _version(_output([str(tools.envoy), "--version"]), r"/(\d+\.\d+\.\d+)/"),
        "proxy.py": proxypy.strip() or "unknown",
        "wrk": _version(_output([tools.wrk, "-v"]), r"wrk (\S+)"),
        "hey": _version(_output(["dpkg-query", "-W", "-f", "${Version}", "hey"]),
                        r"(\d+\.\d+\.\d+)"),
        "redis": _version(_output([tools.redis_server, "--version"]), r"v=(\S+)"),
        "curl": _version(_output([tools.curl, "--version"]), r"curl (\S+)"),
        "python": platform.python_version(),
        "aiohttp": _dist_version("aiohttp"),
        "uvloop": _dist_version("uvloop"),
    }


def _machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = 0.0
    with contextlib.suppress(OSError, ValueError, IndexError):
        meminfo = Path("/proc/meminfo").read_text()
        memory = int(re.findall(r"MemTotal:\s+(\d+)", meminfo)[0]) / 1024 / 1024
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": memory,
            "kernel": platform.release(),
            # Others' work on a shared machine shows here (2 = both cores busy).
            "load_average_before": round(os.getloadavg()[0], 2)}


def _code_version() -> str:
    commit = _output(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]).strip()
    changed = _output(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no",
                       "--", "sidecar"]).strip()
    if not commit:
        return "unknown commit"
    return f"commit {commit}" + (" with local changes in sidecar/" if changed else "")


def _interrupted(signum: int, frame: object) -> NoReturn:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true",
                        help="every row for 2 s, 64 MiB transfers, 5 s of churn")
    parser.add_argument("--out", type=Path, default=ROOT / ".bench",
                        help="venvs, the run's files and results/ (default: .bench)")
    args = parser.parse_args(argv)
    settings = SMOKE if args.smoke else FULL
    root: Path = args.out.resolve()

    tools = install.ensure(root)
    pinning = Pinning.detect()
    if pinning.pinned:
        # The harness and all it starts run on the load CPUs unless told otherwise.
        os.sched_setaffinity(0, pinning.load)
    layout = Layout(root / "run")
    shutil.rmtree(layout.run, ignore_errors=True)
    layout.create()
    signal.signal(signal.SIGTERM, _interrupted)
    procs = Procs(layout.logs)
    try:
        result = Bench(settings, tools, pinning, layout, procs).run()
    except KeyboardInterrupt:
        _log("interrupted; everything it started is stopped")
        return 130
    finally:
        procs.close()
    path = report.write(result, root / "results")
    print(report.markdown(result), end="")
    _log(f"results: {path} (and latest.json, latest.md beside it)")
    for problem in result["problems"]:
        _log(f"problem: {problem}")
    return 1 if result["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
