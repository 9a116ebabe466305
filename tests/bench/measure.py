"""What the benchmark reads: CPU time and memory of a process tree, wrk runs, curl transfers.

CPU time is utime + stime from ``/proc/<pid>/stat``, summed over the process and all its
descendants. Memory is ``VmRSS`` from ``/proc/<pid>/status``, summed the same way. The peak
over a window comes from two sources: the kernel's high-water mark (``VmHWM``, reset at the
start of the window through ``/proc/<pid>/clear_refs``), and a sampler thread reading
``VmRSS`` every 20 ms; the larger of the two is reported.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tests.bench.procs import Procs

__all__ = [
    "MemoryWatch",
    "Transfer",
    "WrkResult",
    "cpu_seconds",
    "curl_transfer",
    "descendants",
    "rss_bytes",
    "run_hey",
    "run_wrk",
]

_CLK_TCK = os.sysconf("SC_CLK_TCK")
_SAMPLE_INTERVAL = 0.02
MIB = 1024 * 1024


def descendants(pid: int) -> list[int]:
    """``pid`` and every live process below it."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = _read(f"/proc/{entry}/stat")
        if stat is None:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def _read(path: str) -> str | None:
    try:
        with open(path) as fh:
            return fh.read()
    except OSError:
        return None


def cpu_seconds(pids: Sequence[int]) -> float:
    """utime + stime of these processes (each counts all its threads), in seconds."""
    total = 0
    for pid in pids:
        stat = _read(f"/proc/{pid}/stat")
        if stat is None:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)
    return total / _CLK_TCK


def _status_kib(pid: int, key: str) -> int:
    status = _read(f"/proc/{pid}/status")
    if status is None:
        return 0
    match = re.search(rf"^{key}:\s+(\d+) kB", status, re.MULTILINE)
    return int(match.group(1)) if match else 0


def rss_bytes(pids: Sequence[int]) -> int:
    return sum(_status_kib(pid, "VmRSS") for pid in pids) * 1024


class MemoryWatch:
    """Peak RSS of a process tree over a window: ``with MemoryWatch(pid) as w: ...; w.peak``."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.before = 0
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._hwm_reset = False

    def __enter__(self) -> MemoryWatch:
        pids = descendants(self.pid)
        self._hwm_reset = all(_reset_hwm(pid) for pid in pids)
        self.before = rss_bytes(pids)
        self.peak = self.before
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        pids = descendants(self.pid)
        self.peak = max(self.peak, rss_bytes(pids))
        if self._hwm_reset:
            self.peak = max(self.peak, sum(_status_kib(p, "VmHWM") for p in pids) * 1024)

    @property
    def growth(self) -> int:
        return max(0, self.peak - self.before)

    def _sample(self) -> None:
        while not self._stop.wait(_SAMPLE_INTERVAL):
            self.peak = max(self.peak, rss_bytes(descendants(self.pid)))


def _reset_hwm(pid: int) -> bool:
    """Reset the kernel's peak-RSS mark of ``pid`` to its current RSS (Linux >= 4.0)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


@dataclass
class WrkResult:
    connections: int
    duration_s: float
    requests: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    non2xx: int  # wrk's "Non-2xx or 3xx responses": status >= 400
    socket_errors: int  # connect + read + write errors and timeouts

    @property
    def errors(self) -> int:
        return self.non2xx + self.socket_errors

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_wrk(
    procs: Procs,
    *,
    script: Path,
    url: str,
    target: str,
    authorization: str,
    connections: int,
    duration: float,
    taskset: Sequence[str],
) -> WrkResult:
    """Drive ``url`` with wrk (one thread) sending ``GET target`` for ``duration`` seconds.

    ``target`` is an absolute URL for the proxies (a forward proxy's absolute-form request
    line) or a path for the upstream itself; ``authorization`` is sent when not empty.
    """
    argv = [
        *taskset,
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        url,
        "--",
        target,
        authorization,
    ]
    done = procs.run(argv, timeout=duration + 60)
    line = next(
        (ln for ln in done.stdout.splitlines() if ln.startswith("BENCH_JSON ")), None
    )
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    data = json.loads(line.removeprefix("BENCH_JSON "))
    seconds = data["duration_us"] / 1e6
    return WrkResult(
        connections=connections,
        duration_s=round(seconds, 3),
        requests=data["requests"],
        rps=data["requests"] / seconds if seconds else 0.0,
        p50_ms=data["p50_us"] / 1000,
        p90_ms=data["p90_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        max_ms=data["max_us"] / 1000,
        non2xx=data["status"],
        socket_errors=data["connect"] + data["read"] + data["write"] + data["timeout"],
    )


def run_hey(
    procs: Procs,
    *,
    url: str,
    proxy: str | None,
    host: str | None,
    connections: int,
    duration: float | None,
    taskset: Sequence[str],
    requests: int = 0,
) -> WrkResult:
    """Drive ``url`` with hey (Go's HTTP client, one CPU) for ``duration`` seconds.

    The rows whose app speaks TLS use it: wrk cannot send a CONNECT, and hey (Go's
    transport) tunnels an ``https://`` URL through ``proxy`` with CONNECT the way Java and
    Node clients do, keeping each tunnel alive. ``host`` sets the Host header and the SNI
    (hey does not verify the server's certificate, so the leaf's SAN does not matter to it;
    the handshake costs the server the same). With ``requests`` instead of ``duration``,
    that many requests on one connection (the readiness probe).
    """
    argv = [*taskset, "hey", "-cpus", "1", "-disable-compression", "-t", "10"]
    if duration is not None:
        argv += ["-c", str(connections), "-z", f"{max(1, round(duration))}s"]
    else:
        argv += ["-c", "1", "-n", str(requests)]
    if proxy:
        argv += ["-x", proxy]
    if host:
        argv += ["-host", host]
    done = procs.run([*argv, url], timeout=(duration or 10) + 60)
    if done.returncode != 0 or "Summary:" not in done.stdout:
        raise RuntimeError(f"hey failed ({done.returncode}): {done.stderr or done.stdout}")
    return parse_hey(done.stdout, connections if duration is not None else 1)


def parse_hey(text: str, connections: int) -> WrkResult:
    """hey's summary as a :class:`WrkResult` (statuses >= 400 count as non-2xx, as in wrk).

    hey stops at the deadline by cancelling the requests in flight; those (at most one per
    connection, reported as "request canceled") are not errors of the server.
    """

    def seconds(label: str) -> float:
        match = re.search(rf"^\s*{re.escape(label)}\s+([\d.]+) secs", text, re.MULTILINE)
        return float(match.group(1)) if match else 0.0

    def percentile(p: int) -> float:
        match = re.search(rf"^\s*{p}% in ([\d.]+) secs", text, re.MULTILINE)
        return float(match.group(1)) * 1000 if match else 0.0

    statuses = {int(code): int(count) for code, count in
                re.findall(r"^\s*\[(\d{3})\]\s+(\d+) responses", text, re.MULTILINE)}
    errors = 0
    for count, message in re.findall(r"^\s*\[(\d+)\]\s+(.*)$", text.split(
            "Error distribution:", 1)[1] if "Error distribution:" in text else "", re.MULTILINE):
        if "request canceled" not in message and "context deadline" not in message:
            errors += int(count)
    total = seconds("Total:")
    answered = sum(statuses.values())
    return WrkResult(
        connections=connections,
        duration_s=round(total, 3),
        requests=answered,
        rps=answered / total if total else 0.0,
        p50_ms=percentile(50),
        p90_ms=percentile(90),
        p99_ms=percentile(99),
        max_ms=seconds("Slowest:") * 1000,
        non2xx=sum(n for code, n in statuses.items() if code >= 400),
        socket_errors=errors,
    )


@dataclass
class Transfer:
    direction: str  # "upload" or "download"
    size: int
    bytes_moved: int  # upload: what the sink counted (or curl sent, if stopped); download: got
    status: int
    seconds: float
    mb_per_s: float  # 10^6 bytes per second, also for a transfer stopped by the budget
    rss_growth: int  # the proxy's peak RSS over the transfer minus its RSS before
    complete: bool = True  # False: still going when the time budget ran out
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_CURL_TIMED_OUT = 28


def curl_transfer(
    procs: Procs,
    *,
    direction: str,
    url: str,
    size: int,
    upload_file: Path,
    proxy: str | None,
    authorization: str | None,
    proxy_pid: int | None,
    taskset: Sequence[str],
    budget: float,
) -> Transfer:
    """Stream ``size`` bytes up (to the byte-counting sink) or down, and check the count.

    A transfer still going after ``budget`` seconds is stopped and reported with the rate
    it had (``complete`` false): some proxies buffer whole bodies and slow down as they grow.
    """
    argv = [*taskset, "curl", "--silent", "--show-error", "--max-time", f"{budget:g}"]
    if proxy:
        argv += ["--proxy", proxy]
    if authorization:
        argv += ["-H", f"Authorization: {authorization}"]
    if direction == "upload":
        # -T streams the file with a Content-Length; no Expect: 100-continue round trip.
        argv += ["-T", str(upload_file), "-X", "POST", "-H", "Expect:", "-o", "-"]
    else:
        argv += ["-o", "/dev/null"]
    argv += ["-w", "\nBENCH %{http_code} %{size_download} %{size_upload} %{time_total}", url]

    with MemoryWatch(proxy_pid) if proxy_pid else contextlib.nullcontext() as watch:
        done = procs.run(argv, timeout=budget + 30)
    growth = watch.growth if isinstance(watch, MemoryWatch) else 0
    tail = done.stdout.rsplit("\nBENCH ", 1)
    if len(tail) != 2:
        return Transfer(direction, size, 0, 0, 0.0, 0.0, growth, False, _curl_error(done))
    body, stats = tail
    code, downloaded, uploaded, seconds_text = stats.split()
    seconds = float(seconds_text)
    status = int(code)
    sent = int(float(uploaded if direction == "upload" else downloaded))
    if done.returncode == _CURL_TIMED_OUT and sent > 0:
        rate = sent / seconds / 1e6 if seconds else 0.0
        return Transfer(direction, size, sent, status, round(seconds, 3), rate, growth, False)
    moved = sent
    if direction == "upload":
        # The sink answers "received <n>": the bytes that reached the upstream.
        match = re.search(r"received (\d+)", body)
        moved = int(match.group(1)) if match else 0
    error = None
    if done.returncode != 0:
        error = _curl_error(done)
    elif status != 200:
        error = f"HTTP {status}"
    elif moved != size or sent != size:
        error = f"moved {moved} of {size} bytes"
    rate = size / seconds / 1e6 if seconds and error is None else 0.0
    return Transfer(direction, size, moved, status, round(seconds, 3), rate, growth, True, error)


def _curl_error(done: Any) -> str:
    text = (done.stderr or "").strip().splitlines()
    return f"curl exit {done.returncode}: {text[-1] if text else 'no output'}"
