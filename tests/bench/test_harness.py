"""Fast checks of the benchmark's own logic (the benchmark itself runs with make bench)."""

from __future__ import annotations

import socket

from tests.bench.measure import parse_hey
from tests.bench.report import markdown, targets
from tests.bench.services import UploadSink


def _exchange(sock: socket.socket, request: bytes) -> bytes:
    sock.sendall(request)
    answer = b""
    while not answer.endswith(b"\n") or b"\r\n\r\n" not in answer:
        answer += sock.recv(4096)
    return answer


def test_upload_sink_counts_length_and_chunked_bodies_on_one_connection() -> None:
    sink = UploadSink()
    sink.start()
    try:
        with socket.create_connection(("127.0.0.1", sink.port), timeout=5) as sock:
            body = b"x" * 300_000
            fixed = _exchange(
                sock,
                b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 300000\r\n\r\n" + body,
            )
            chunked = _exchange(
                sock,
                b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"5;ext=1\r\nhello\r\n186a0\r\n" + b"y" * 100_000 + b"\r\n0\r\nX-T: 1\r\n\r\n",
            )
    finally:
        sink.close()
    assert fixed.startswith(b"HTTP/1.1 200 ") and fixed.endswith(b"received 300000\n")
    assert chunked.endswith(b"received 100005\n")


def _row(name: str, cpu: float, p99: float, **extra: object) -> dict[str, object]:
    return {"name": name, "cpu_us_per_req": cpu, "load": {"p99_ms": p99}, **extra}


def test_targets_are_ratios_of_the_same_run_and_skip_failed_transfers() -> None:
    mib = 1024 * 1024
    rows = [
        _row("nginx", 10, 1.0, upload={"mb_per_s": 400.0, "rss_growth": 0, "error": None},
             download={"mb_per_s": 800.0, "rss_growth": 0, "error": None}),
        _row("envoy", 20, 2.0, c1_added_p50_ms=0.1),
        _row("proxy.py", 100, 5.0),
        _row("sidecar, redis store", 44, 6.0),
        _row("sidecar, interception", 50, 6.0),
        _row("envoy, TLS from the app", 40, 6.0),
        _row("sidecar", 40, 6.0, rss_idle=50 * mib, c1_added_p50_ms=0.15,
             upload={"mb_per_s": 100.0, "rss_growth": 8 * mib, "error": None},
             download={"mb_per_s": 900.0, "rss_growth": 99 * mib, "error": "HTTP 502"}),
    ]
    verdicts = {t["target"]: (t["value"], t["met"]) for t in targets(rows)}
    assert verdicts["CPU per request / proxy.py's"] == (0.4, True)
    assert verdicts["CPU per request / Envoy's"] == (2.0, False)
    assert verdicts["p99 at c=32 / Envoy's"] == (3.0, False)
    assert verdicts["added latency at c=1 (p50) / Envoy's"][1] is False  # 1.5
    assert verdicts["CPU per request, redis store / memory store"][1] is True  # 1.1
    assert verdicts["CPU per request, interception / Envoy terminating TLS"] == (1.25, False)
    assert verdicts["upload: peak RSS growth, MiB"] == (8.0, True)
    assert verdicts["upload: MB/s / nginx's"] == (0.25, False)
    # A failed transfer gives no numbers at all, not a good-looking RSS or speed.
    assert verdicts["download: peak RSS growth, MiB"] == (None, None)
    assert verdicts["download: MB/s / nginx's"] == (None, None)
    assert verdicts["idle RSS, MiB"] == (50.0, True)


def test_markdown_marks_failed_rows_and_transfers() -> None:
    result = {
        "mode": "smoke", "date": "2026-01-01 00:00 UTC", "code": "commit abc",
        "machine": {"cpu": "cpu", "cores": 2, "memory_gib": 24.0, "kernel": "6.1"},
        "versions": dict.fromkeys(
            ("nginx", "envoy", "proxy.py", "python", "aiohttp", "uvloop", "wrk"), "1"),
        "pinning": "none",
        "settings": {"connections": 32, "duration": 2, "warmup": 1, "c1_duration": 2,
                     "transfer_mib": 64, "transfer_budget": 60, "churn_ttl": 2, "rounds": 1,
                     "churn_duration": 5},
        "rows": [
            {"name": "envoy", "error": "TimeoutError: no answer"},
            {"name": "sidecar", "load": {"rps": 1000.0, "p50_ms": 1.0, "p99_ms": 2.0,
                                         "non2xx": 3, "socket_errors": 0},
             "upload": {"error": "HTTP 502", "rss_growth": None}},
        ],
        "churn": [{"name": "sidecar", "error": "RuntimeError: wrk failed"}],
        "targets": [], "problems": ["sidecar: load saw 3 non-2xx responses"],
    }
    text = markdown(result)
    assert "| envoy | failed: TimeoutError: no answer |" in text
    assert "| sidecar | 1,000 | 1.00 | 2.00 | — | — | — | — | 3 | 0 |" in text
    assert "failed: HTTP 502" in text
    assert "| sidecar | failed: RuntimeError: wrk failed |" in text
    assert "- sidecar: load saw 3 non-2xx responses" in text


_HEY = """
Summary:
  Total:\t2.0040 secs
  Slowest:\t0.0310 secs
  Fastest:\t0.0004 secs
  Average:\t0.0060 secs
  Requests/sec:\t5000.1234

Response time histogram:
  0.000 [1]\t|
  0.003 [9000]\t|■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■

Latency distribution:
  10% in 0.0020 secs
  25% in 0.0040 secs
  50% in 0.0055 secs
  75% in 0.0070 secs
  90% in 0.0090 secs
  95% in 0.0100 secs
  99% in 0.0200 secs

Status code distribution:
  [200]\t9990 responses
  [502]\t10 responses

Error distribution:
  [32]\tGet "https://api.bench.test/small": net/http: request canceled
  [3]\tGet "https://api.bench.test/small": EOF
"""


def test_hey_summary_reads_like_wrk_and_ignores_the_requests_cut_at_the_deadline() -> None:
    result = parse_hey(_HEY, 32)
    assert (result.requests, result.non2xx, result.socket_errors) == (10_000, 10, 3)
    assert result.duration_s == 2.004 and round(result.rps) == 4990
    assert (result.p50_ms, result.p90_ms, result.p99_ms, result.max_ms) == (5.5, 9.0, 20.0, 31.0)
