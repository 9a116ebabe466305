"""System calls per proxied GET, counted with strace, and the sidecar's idle RSS.

    python -m tests.bench.syscalls [--requests N] [--log-level info|warning] [--json]
                                   [--upstream mtls|plain] [--out DIR] [--trace N]

The same setup as :mod:`tests.bench.instructions` (an upstream in a process of its own
answering 64 bytes, a ``static`` token, one keep-alive client sending absolute-form GETs),
with the sidecar running natively:

- **idle RSS**: ``VmRSS`` of the sidecar once ``/readyz`` answers 200 (the static token is
  there from the start), before any proxied request;
- **system calls**: after 200 warm-up requests, ``strace -f -c`` attaches to the sidecar for
  N requests, then detaches; each call's count divided by N is the figure. ``--trace N``
  also records the calls of N requests one by one (``strace -f -tt``) into ``--out`` to
  read in order.

Every process is started in a session of its own with the parent-death signal set, and
stopped at the end. Needs ``strace`` and the right to trace one's own children.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.bench.instructions import (
    HOST,
    ROOT,
    WARMUP,
    Client,
    _config,
    _sidecar_env,
    start_upstream,
)
from tests.bench.procs import Procs, free_port, http_status, wait_until

ATTACH_TIMEOUT = 30.0
SETTLE = 0.3  # after the last answer: the access lines' batched write (every 50 ms)


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def _strace(procs: Procs, pid: int, out: Path, args: list[str]) -> subprocess.Popen[bytes]:
    """strace attached to every thread of ``pid``; returns once it reports the attach."""
    (out / "strace.log").unlink(missing_ok=True)
    proc = procs.start("strace", ["strace", "-f", *args, "-p", str(pid)])
    # Procs.start sends stderr into <out>/strace.log; the attach notice is in there.
    err = out / "strace.log"

    def attached() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"strace exited with {proc.returncode}; see {err}")
        return err.exists() and "attached" in err.read_text(errors="replace")

    wait_until(attached, ATTACH_TIMEOUT, "strace to attach")
    time.sleep(0.2)
    return proc


def _detach(procs: Procs, proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGINT)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=ATTACH_TIMEOUT)
    procs.stop(proc)


def parse_summary(text: str) -> dict[str, int]:
    """The calls column of an ``strace -c`` table, by system call name."""
    calls: dict[str, int] = {}
    for line in text.splitlines():
        fields = line.split()
        # % time, seconds, usecs/call, calls, [errors,] syscall
        if len(fields) >= 5 and re.fullmatch(r"[\d.]+", fields[0]) and fields[3].isdigit():
            if fields[-1] != "total":
                calls[fields[-1]] = int(fields[3])
    return calls


def _wrk(procs: Procs, port: int, connections: int, seconds: float) -> int:
    """wrk's requests over ``connections`` keep-alive connections; all must be 200."""
    script = Path(__file__).with_name("templates") / "wrk.lua"
    done = procs.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "30s",
         "-s", str(script), f"http://127.0.0.1:{port}", "--", f"http://{HOST}/x", ""],
        timeout=seconds + 60,
    )
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    data = json.loads(line.removeprefix("BENCH_JSON "))
    errors = sum(data[k] for k in ("status", "connect", "read", "write", "timeout"))
    if errors or not data["requests"]:
        raise RuntimeError(f"wrk: {errors} errors in {data['requests']} requests")
    return int(data["requests"])


def measure(
    requests: int, level: str, tls: bool, out: Path, trace: int,
    connections: int = 1, seconds: float = 5.0,
) -> dict[str, Any]:
    procs = Procs(out)
    client: Client | None = None
    try:
        _, upstream_port, tls_dir = start_upstream(procs, out, tls)  # Procs stops it

        proxy_port, admin_port = free_port(), free_port()
        config_file = out / "sidecar.yaml"
        config_file.write_text(json.dumps(
            _config(level, (proxy_port, admin_port), upstream_port, tls_dir), indent=2))
        (out / "sidecar.log").unlink(missing_ok=True)
        sidecar = procs.start(
            "sidecar", [sys.executable, "-m", "sidecar", "run", "--config", str(config_file)],
            env=_sidecar_env(), cwd=ROOT,
        )

        def ready() -> bool:
            if sidecar.poll() is not None:
                raise RuntimeError(f"the sidecar exited; see {out / 'sidecar.log'}")
            return http_status(f"http://127.0.0.1:{admin_port}/readyz") == 200

        wait_until(ready, 60.0, "the sidecar's /readyz")
        time.sleep(0.5)  # whatever start-up left for the loop's next turns
        rss_idle = _rss_kib(sidecar.pid)

        client = Client(proxy_port)
        client.run(WARMUP, "warm-up")
        if trace:
            tracer = _strace(procs, sidecar.pid, out,
                             ["-tt", "-o", str(out / "trace.txt")])
            client.run(trace, "traced requests")
            time.sleep(SETTLE)
            _detach(procs, tracer)
        summary = out / "strace-summary.txt"
        tracer = _strace(procs, sidecar.pid, out, ["-c", "-o", str(summary)])
        if connections > 1:
            requests = _wrk(procs, proxy_port, connections, seconds)
        else:
            client.run(requests, "measured requests")
        time.sleep(SETTLE)
        _detach(procs, tracer)
        calls = parse_summary(summary.read_text())
        client.close()
        client = None
        return {
            "syscalls_per_request": {
                name: round(n / requests, 2)
                for name, n in sorted(calls.items(), key=lambda kv: -kv[1])
            },
            "total_per_request": round(sum(calls.values()) / requests, 2),
            "requests": requests,
            "connections": connections,
            "rss_idle_kib": rss_idle,
            "log_level": level,
            "upstream": "https with mTLS" if tls else "plain http",
            "tree": str(ROOT),
        }
    finally:
        if client is not None:
            client.close()
        procs.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench.syscalls",
        description="System calls per proxied GET (strace -c) and the idle RSS.",
    )
    parser.add_argument("--requests", type=int, default=2000, help="measured GETs (2000)")
    parser.add_argument("--log-level", choices=("info", "warning"), default="info")
    parser.add_argument("--upstream", choices=("mtls", "plain"), default="mtls")
    parser.add_argument("--trace", type=int, default=0,
                        help="also record N requests' calls in order into --out/trace.txt")
    parser.add_argument("--connections", type=int, default=1,
                        help="more than 1: the measured load is wrk on that many connections")
    parser.add_argument("--seconds", type=float, default=5.0,
                        help="how long wrk runs (with --connections)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--out", type=Path, help="keep the config, logs and strace output here")
    args = parser.parse_args(argv)
    if args.requests < 1:
        parser.error("--requests must be at least 1")
    if shutil.which("strace") is None:
        raise SystemExit("missing: strace (Debian: apt-get install strace)")
    tls = args.upstream == "mtls"
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        result = measure(args.requests, args.log_level, tls, args.out.resolve(), args.trace,
                         args.connections, args.seconds)
    else:
        with tempfile.TemporaryDirectory(prefix="sidecar-syscalls-") as tmp:
            result = measure(args.requests, args.log_level, tls, Path(tmp), args.trace,
                             args.connections, args.seconds)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    per = result["syscalls_per_request"]
    print(f"{result['total_per_request']:g} system calls per proxied GET "
          f"(log level {result['log_level']}, {result['upstream']} upstream, "
          f"{result['requests']:,} requests on {result['connections']} connection(s)); "
          f"idle RSS {result['rss_idle_kib'] / 1024:.1f} MiB")
    for name, n in per.items():
        print(f"  {name:<16} {n:>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
