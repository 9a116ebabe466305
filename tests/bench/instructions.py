"""User-space instructions per proxied GET, counted with callgrind.

    python -m tests.bench.instructions [--requests N] [--log-level info|warning] [--json]
                                       [--upstream mtls|plain] [--out DIR]

Unlike timings, the count is the same however busy the machine is, so two trees can be
compared on any machine, one run each. What runs:

- an upstream in a process of its own (not counted): HTTP/1.1 keep-alive answering every
  GET with a 64-byte body, and 403 when the request lacks the injected bearer token. By
  default it is HTTPS with a client certificate required (mTLS, certificates from
  :class:`sidecar.sandbox.pki.Pki`), as in ``make bench``; ``--upstream plain`` makes it
  plain HTTP;
- ``python -m sidecar run`` under ``valgrind --tool=callgrind --instr-atstart=no``, with a
  ``static`` token and the access line on (``--log-level info``) or off (``warning``);
- this process as the client: one keep-alive connection, absolute-form requests
  (``GET http://api.example/x``). 200 warm-up requests set up both connections and warm the
  caches; then ``callgrind_control -i on``, N requests, ``-i off``, ``-d``. The total of
  that dump divided by N is the figure.

Every process is started in a session of its own with the parent-death signal set, and
stopped at the end (SIGTERM, then SIGKILL), also on a failure or Ctrl-C. The config, the
logs and the callgrind dump stay in ``--out`` when given (read the dump with
``callgrind_annotate``); otherwise they go to a temporary directory that is removed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sidecar.hotpath import PURE_ENV
from tests.bench.procs import Procs, free_port, http_status, wait_until

ROOT = Path(__file__).resolve().parents[2]  # the tree whose sidecar is measured
HOST = "api.example"
TOKEN = "bench-static-token-0123456789"
BODY = b"0123456789abcdef" * 4  # 64 bytes
WARMUP = 200
UPSTREAM_READY = "upstream listening on port"

START_TIMEOUT = 120.0  # the sidecar's start under valgrind: imports run 20-50 times slower
IO_TIMEOUT = 60.0  # one request's answer, instrumented
CONTROL_TIMEOUT = 60.0  # one callgrind_control command
STOP_TIMEOUT = 30.0  # the clean exit after SIGTERM
SETTLE = 0.3  # after the last answer, for the access lines' batched write (every 50 ms)


# -- the upstream (a process of its own) ---------------------------------------------------


class _Upstream(asyncio.Protocol):
    """Answers each request head with the 64-byte body; 403 when the token is missing."""

    OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 64\r\n\r\n" + BODY
    FORBIDDEN = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n"
    EXPECTED = f"\r\nauthorization: bearer {TOKEN}\r\n".encode().lower()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            head, self.buffer = self.buffer[: end + 4], self.buffer[end + 4 :]
            # GETs only: a request with a body would be a harness bug, answered with 403.
            ok = self.EXPECTED in head.lower() and b"\r\ncontent-length:" not in head.lower()
            self.transport.write(self.OK if ok else self.FORBIDDEN)


def serve_upstream(tls_dir: str | None) -> None:
    """Listen on a free port of 127.0.0.1, print it, and serve until stopped."""
    context = None
    if tls_dir:
        directory = Path(tls_dir)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(directory / "api.crt", directory / "api.key")
        context.load_verify_locations(directory / "ca.crt")
        context.verify_mode = ssl.CERT_REQUIRED

    async def serve() -> None:
        server = await asyncio.get_running_loop().create_server(
            _Upstream, "127.0.0.1", 0, ssl=context
        )
        print(f"{UPSTREAM_READY} {server.sockets[0].getsockname()[1]}", flush=True)
        async with server:
            await server.serve_forever()

    asyncio.run(serve())


def _upstream_port(log_file: Path) -> int | None:
    try:
        text = log_file.read_text(errors="replace")
    except FileNotFoundError:
        return None
    match = re.search(rf"^{UPSTREAM_READY} (\d+)$", text, re.MULTILINE)
    return int(match[1]) if match else None


# -- the client ----------------------------------------------------------------------------


class Client:
    """One keep-alive connection to the proxy, one request at a time."""

    REQUEST = (
        f"GET http://{HOST}/x HTTP/1.1\r\nHost: {HOST}\r\nUser-Agent: bench-instructions\r\n"
        "Accept: */*\r\n\r\n"
    ).encode()

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = self.sock.makefile("rb")

    def get(self) -> tuple[int, bytes]:
        """Send one GET and read its whole answer: (status, body)."""
        self.sock.sendall(self.REQUEST)
        status_line = self.reader.readline(65536)
        if not status_line:
            raise ConnectionError("the proxy closed the connection")
        parts = status_line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise ConnectionError(f"not an HTTP status line: {status_line!r}")
        length, closing = 0, False
        while (line := self.reader.readline(65536)) not in (b"\r\n", b"\n"):
            if not line:
                raise ConnectionError("the proxy closed the connection inside a header")
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                raise ConnectionError(f"unexpected transfer-encoding: {value.strip()!r}")
            elif name == b"connection" and value.strip().lower() == b"close":
                closing = True
        body = self.reader.read(length)
        if len(body) != length:
            raise ConnectionError(f"body cut short: {len(body)} of {length} bytes")
        if closing:
            raise ConnectionError("the proxy closed the keep-alive connection")
        return int(parts[1]), body

    def run(self, count: int, what: str) -> None:
        """``count`` GETs; every answer must be a 200 with the upstream's body."""
        bad: dict[str, int] = {}
        for _ in range(count):
            status, body = self.get()
            if status != 200 or body != BODY:
                key = f"{status} {body[:80]!r}"
                bad[key] = bad.get(key, 0) + 1
        if bad:
            detail = ", ".join(f"{n} x {k}" for k, n in sorted(bad.items()))
            raise RuntimeError(f"{what}: {sum(bad.values())} of {count} answers not 200: {detail}")

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


# -- the run -------------------------------------------------------------------------------


def _check_tools() -> None:
    missing = [t for t in ("valgrind", "callgrind_control") if shutil.which(t) is None]
    if missing:
        raise SystemExit(f"missing: {', '.join(missing)} (Debian: apt-get install valgrind)")


def _callgrind_control(procs: Procs, *args: str) -> None:
    done = procs.run(["callgrind_control", *args], timeout=CONTROL_TIMEOUT)
    if done.returncode != 0 or "OK" not in done.stdout:
        raise RuntimeError(
            f"callgrind_control {' '.join(args)} failed ({done.returncode}): "
            f"{(done.stdout + done.stderr).strip()}"
        )


def _dump_total(path: Path) -> int:
    """The Ir total of a callgrind dump: its ``totals:`` line, else ``summary:``."""
    found: dict[str, int] = {}
    for line in path.read_text(errors="replace").splitlines():
        match = re.match(r"(totals|summary):\s*(\d+)", line)
        if match:
            found[match[1]] = int(match[2])
    if not found:
        raise RuntimeError(f"no totals or summary line in {path}")
    return found.get("totals") or found.get("summary", 0)


def _config(
    level: str, ports: tuple[int, int], upstream_port: int, tls_dir: Path | None
) -> dict[str, Any]:
    upstream: dict[str, Any] = {
        "match": [HOST],
        "target": f"{'https' if tls_dir else 'http'}://127.0.0.1:{upstream_port}",
        "auth": {"type": "static", "token": TOKEN},
        # Generous: under callgrind everything runs 20-100 times slower than natively.
        "timeouts": {"connect": 60, "read": 120, "token_wait": 60},
    }
    if tls_dir:
        upstream["tls"] = {
            "ca_file": str(tls_dir / "ca.crt"),
            "cert_file": str(tls_dir / "client.crt"),
            "key_file": str(tls_dir / "client.key"),
        }
    return {
        "listen": {
            "proxy": f"127.0.0.1:{ports[0]}",
            "admin": f"127.0.0.1:{ports[1]}",
            "idle_timeout": 600,
        },
        "log": {"level": level, "format": "json"},
        # No file watching: its timer would add instructions per second, not per request.
        "reload": {"watch": False},
        "shutdown": {"delay": 0, "grace": 5},
        "upstreams": {"api": upstream},
    }


def _path_env() -> dict[str, str]:
    """This tree first on the module path, whatever the venv has installed."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path}


def _sidecar_env() -> dict[str, str]:
    """The sidecar's whole environment: no SIDECAR_* overrides of the generated config (but
    SIDECAR_PURE_PYTHON, to count the pure-Python hot path), unbuffered output as in the
    image, and a fixed hash seed so that two runs take the same code paths."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_") or k == PURE_ENV
    }
    env.update(_path_env(), PYTHONHASHSEED="0", PYTHONUNBUFFERED="1")
    return env


def _stop_sidecar(procs: Procs, proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM and up to STOP_TIMEOUT for a clean exit (slow under valgrind), then Procs.stop
    (SIGTERM again, SIGKILL after 5 s)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=STOP_TIMEOUT)
    procs.stop(proc)


def start_upstream(
    procs: Procs, out: Path, tls: bool
) -> tuple[subprocess.Popen[bytes], int, Path | None]:
    """The measured upstream in a process of its own: (process, port, PKI folder or None).

    With ``tls`` it is HTTPS requiring a client certificate of a fresh CA in ``out/pki``."""
    tls_dir: Path | None = None
    if tls:
        from sidecar.sandbox.pki import Pki

        tls_dir = out / "pki"
        pki = Pki(tls_dir, name="authsidecar bench CA")
        pki.issue_server("api", (HOST, "127.0.0.1", "localhost"))
        pki.issue_client("client", "bench-client")
    upstream_log = out / "upstream.log"
    upstream_log.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "tests.bench.instructions", "--serve-upstream"]
    if tls_dir:
        argv += ["--upstream-tls", str(tls_dir)]
    upstream = procs.start("upstream", argv, env=_path_env(), cwd=ROOT)

    def listening() -> bool:
        if upstream.poll() is not None:
            raise RuntimeError(
                f"the upstream exited with {upstream.returncode}; see {upstream_log}")
        return _upstream_port(upstream_log) is not None

    wait_until(listening, 30.0, "the upstream to listen")
    port = _upstream_port(upstream_log)
    assert port is not None
    return upstream, port, tls_dir


def measure(requests: int, level: str, tls: bool, out: Path) -> dict[str, Any]:
    procs = Procs(out)
    client: Client | None = None
    try:
        upstream, upstream_port, tls_dir = start_upstream(procs, out, tls)

        config_file = out / "sidecar.yaml"  # JSON is YAML
        # Fixed ports, not 0: at log level warning there is no "started" line to read them
        # from, so readiness is /readyz on the admin port.
        proxy_port, admin_port = free_port(), free_port()
        config = _config(level, (proxy_port, admin_port), upstream_port, tls_dir)
        config_file.write_text(json.dumps(config, indent=2))
        dump = out / "callgrind.out"
        for old in out.glob("callgrind.out*"):
            old.unlink()
        sidecar_log = out / "sidecar.log"
        sidecar_log.unlink(missing_ok=True)
        sidecar = procs.start(
            "sidecar",
            [
                "valgrind", "--tool=callgrind", "--instr-atstart=no",
                f"--callgrind-out-file={dump}", f"--log-file={out / 'valgrind.log'}",
                sys.executable, "-m", "sidecar", "run", "--config", str(config_file),
            ],
            env=_sidecar_env(),
            cwd=ROOT,
        )

        def ready() -> bool:
            for name, proc in (("sidecar", sidecar), ("upstream", upstream)):
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"the {name} exited with {proc.returncode} before the sidecar was "
                        f"ready; see {out / (name + '.log')}"
                    )
            return http_status(f"http://127.0.0.1:{admin_port}/readyz", timeout=10.0) == 200

        t0 = time.monotonic()
        try:
            wait_until(ready, START_TIMEOUT, "the sidecar's /readyz", interval=0.5)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; see {sidecar_log} and {out / 'valgrind.log'}") from None
        start_seconds = time.monotonic() - t0

        client = Client(proxy_port)
        client.run(WARMUP, "warm-up")
        pid = str(sidecar.pid)  # valgrind runs the program in its own process
        _callgrind_control(procs, "-i", "on", pid)
        t1 = time.monotonic()
        client.run(requests, "measured requests")
        time.sleep(SETTLE)
        _callgrind_control(procs, "-i", "off", pid)
        seconds = time.monotonic() - t1
        _callgrind_control(procs, "-d", pid)
        dumps = sorted(
            out.glob("callgrind.out.*"), key=lambda p: int(p.name.rpartition(".")[2])
        )
        if not dumps:
            raise RuntimeError(f"callgrind wrote no dump into {out}")
        total = _dump_total(dumps[-1])
        client.close()
        client = None
        _stop_sidecar(procs, sidecar)
        return {
            "instructions_per_request": round(total / requests),
            "instructions": total,
            "requests": requests,
            "warmup": WARMUP,
            "log_level": level,
            "upstream": "https with mTLS" if tls else "plain http",
            "auth": "static",
            "hot_path": _hot_path(),
            "tree": str(ROOT),
            "commit": _commit(),
            "python": sys.version.split()[0],
            "valgrind": _valgrind_version(),
            "start_seconds": round(start_seconds, 1),
            "measured_seconds": round(seconds, 1),
            "dump": str(dumps[-1]),
        }
    finally:
        if client is not None:
            client.close()
        procs.close()


def _hot_path() -> str | None:
    """What ``sidecar --version`` says of the hot path, in the sidecar's environment."""
    try:
        done = subprocess.run(
            [sys.executable, "-m", "sidecar", "--version"], capture_output=True, text=True,
            timeout=60, check=False, env=_sidecar_env(), cwd=ROOT,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip().partition("hot path: ")[2] or None


def _commit() -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
            capture_output=True, text=True, timeout=10, check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None


def _valgrind_version() -> str | None:
    try:
        done = subprocess.run(
            ["valgrind", "--version"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench.instructions",
        description="User-space instructions per proxied GET, counted with callgrind.",
    )
    parser.add_argument("--requests", type=int, default=2000, help="measured GETs (2000)")
    parser.add_argument(
        "--log-level", choices=("info", "warning"), default="info",
        help="info: one access line per request (the default); warning: none",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument(
        "--upstream", choices=("mtls", "plain"), default="mtls",
        help="mtls: HTTPS with a client certificate, as make bench (the default); plain: HTTP",
    )
    parser.add_argument(
        "--out", type=Path,
        help="keep the config, logs and callgrind dump here (default: a temporary directory)",
    )
    parser.add_argument("--serve-upstream", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--upstream-tls", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.serve_upstream:
        serve_upstream(args.upstream_tls)
        return 0
    if args.requests < 1:
        parser.error("--requests must be at least 1")
    _check_tools()

    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        result = measure(args.requests, args.log_level, args.upstream == "mtls", args.out.resolve())
    else:
        with tempfile.TemporaryDirectory(prefix="sidecar-instructions-") as tmp:
            result = measure(args.requests, args.log_level, args.upstream == "mtls", Path(tmp))
            result["dump"] = None

    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"{result['instructions_per_request']:,} instructions per proxied GET "
            f"(log level {result['log_level']}, {result['upstream']} upstream, "
            f"{result['auth']} token, hot path {result['hot_path']}; "
            f"{result['requests']:,} requests after "
            f"{result['warmup']} of warm-up, {result['instructions']:,} in all; "
            f"tree {result['tree']} at {result['commit']})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
