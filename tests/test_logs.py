"""Redaction: secret-named keys and registered secret values never reach a log line. The
console format's order, and the README documenting every event and access-line field."""

from __future__ import annotations

import ast
import asyncio
import contextlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
import structlog

from sidecar import logs
from sidecar.sandbox.servers import SandboxStack
from tests.helpers.scripted import read_body, start_upstream
from tests.helpers.sidecars import SidecarFactory

ROOT = Path(__file__).resolve().parents[1]


def test_keys_naming_secrets_are_masked_and_others_are_not() -> None:
    event = logs.redact(None, "info", {
        "event": "x",
        "password": "p",
        "refresh_token": "r",
        "Authorization": "Bearer t",
        "set-cookie": "c",
        "client_secret": "s",
        "token_rejected": True,
        "token_url": "https://idp/token",
        "grant": "refresh_token",
        "headers": {"authorization": "Bearer t", "x-request-id": "42"},
    })
    assert event["password"] == event["refresh_token"] == event["Authorization"] == "***"
    assert event["set-cookie"] == event["client_secret"] == "***"
    assert event["token_rejected"] is True
    assert event["token_url"] == "https://idp/token"
    assert event["grant"] == "refresh_token"
    assert event["headers"] == {"authorization": "***", "x-request-id": "42"}


def test_registered_values_are_cut_out_of_any_string() -> None:
    logs.secrets.add("s3cr3t-value")
    logs.secrets.add("eyJtoken.part.sig", dynamic=True)
    event = logs.redact(None, "error", {
        "event": "failed with s3cr3t-value inside",
        "reason": ["nested eyJtoken.part.sig"],
    })
    assert event == {"event": "failed with *** inside", "reason": ["nested ***"]}


ACCESS = ("rid-eyJaccess.tok.en", "moex", "GET", "/x/eyJaccess.tok.en/\u00e9\"q", 200, 0.01234,
          0, 5, False, True, 0.25, None, False)


async def test_fast_access_line_is_the_json_structlog_would_write(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The access line skips structlog's chain in JSON format: same keys and order, same
    redaction of the values an app controls, valid JSON whatever the path holds."""
    logs.access_log.configure("info", "json")  # not logs.configure: it would bind capsys
    logs.secrets.add("eyJaccess.tok.en", dynamic=True)
    logs.access_log.request(*ACCESS)
    assert capsys.readouterr().out == ""  # held (with a loop running) to write many at once
    logs.access_log.flush()
    line = json.loads(capsys.readouterr().out)
    assert list(line) == [
        "request_id", "upstream", "method", "path", "status", "duration_ms", "bytes_in",
        "bytes_out", "replayed", "retried_429", "queued_s", "refused", "broken",
        "replay_budget_exceeded", "event",
        "level", "ts",
    ]
    assert line["request_id"] == "rid-***" and line["path"] == "/x/***/\u00e9\"q"
    assert line["duration_ms"] == 12.34 and line["queued_s"] == 0.25
    assert line["retried_429"] is True and line["refused"] is None
    assert line["event"] == "request" and line["level"] == "info"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", line["ts"])


def test_access_line_in_console_format_and_below_info(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logs.secrets.add("eyJaccess.tok.en", dynamic=True)
    try:
        logs.access_log.configure("info", "console")  # goes through structlog's chain
        with structlog.testing.capture_logs() as events:
            logs.access_log.request(*ACCESS)
        assert events[0]["event"] == "request" and events[0]["status"] == 200
        logs.access_log.configure("warning", "json")
        logs.access_log.request(*ACCESS)
        logs.access_log.flush()
        assert capsys.readouterr().out == ""
    finally:
        logs.access_log.configure("info", "json")


def test_flags_under_secret_named_keys_are_kept() -> None:
    """``serving_old_token: true`` is a fact, not a secret; any string, number or structure
    under a secret-named key is still masked (a number may be a PIN)."""
    event = logs.redact(None, "warning", {
        "event": "token_fetch_failed",
        "serving_old_token": True,
        "refresh_token": None,
        "pin": 1234,
        "access_token": "eyJ.a.b",
        "id_token": ["eyJ.a.b"],
        "detail": {"has_token": False, "token": "eyJ.c.d"},
    })
    assert event["serving_old_token"] is True and event["refresh_token"] is None
    assert event["pin"] == event["access_token"] == event["id_token"] == "***"
    assert event["detail"] == {"has_token": False, "token": "***"}


def test_console_format_puts_event_upstream_and_status_first() -> None:
    line = logs.console_renderer()(None, "info", {
        "ts": "2026-01-01T00:00:00.000000Z", "level": "info", "request_id": "r1",
        "method": "GET", "status": 200, "path": "/x", "upstream": "moex", "event": "request",
    })
    assert re.match(r"request +upstream=moex status=200 \[info\] request_id=r1 method=GET "
                    r"path=/x ts=2026-01-01T00:00:00.000000Z$", line), line
    line = logs.console_renderer()(None, "warning", {
        "event": "token_fetch_failed", "level": "warning", "reason": "down", "upstream": "k",
        "serving_old_token": True,
    })
    assert re.match(r"token_fetch_failed +upstream=k \[warning\] reason=down "
                    r"serving_old_token=True$", line), line


# -- the README documents every event and every access-line field ---------------------------

_LEVELS = {"debug", "info", "warning", "error", "exception", "critical"}


def logged_events() -> dict[str, set[str]]:
    """Every event the sidecar logs (the sandbox's emulators aside), with the fields passed."""
    events: dict[str, set[str]] = {}
    for path in sorted((ROOT / "sidecar").rglob("*.py")):
        if "sandbox" in path.relative_to(ROOT).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in _LEVELS and node.args):
                continue
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str) and \
                    re.fullmatch(r"[a-z][a-z0-9_]+", first.value):
                events.setdefault(first.value, set()).update(
                    k.arg for k in node.keywords if k.arg)
    return events


def readme_logs_section() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    return readme[readme.index("### Logs\n"):readme.index("### Runbook\n")]


def test_every_event_and_its_fields_are_documented() -> None:
    events = logged_events()
    assert {"token_fetch_failed", "request", "started", "stopped"} <= set(events)
    rows = {}
    for line in readme_logs_section().splitlines():
        cells = [c.strip() for c in line.strip().split("|")[1:-1]]
        if len(cells) == 4:
            for name in re.findall(r"`([a-z0-9_]+)`", cells[0]):
                rows[name] = cells[2]
    missing = sorted(set(events) - {"request"} - set(rows))
    assert not missing, f"events missing from the README's Logs table: {missing}"
    for name, fields in events.items():
        if name == "request":
            continue
        undocumented = sorted(f for f in fields if f"`{f}`" not in rows[name])
        assert not undocumented, f"{name}: fields {undocumented} not in its README row"


def test_every_access_line_field_is_documented(capsys: pytest.CaptureFixture[str]) -> None:
    logs.access_log.configure("info", "json")
    logs.access_log.request(*ACCESS)
    logs.access_log.flush()
    fields = set(json.loads(capsys.readouterr().out)) - {"event", "level", "ts"}
    assert fields == logged_events()["request"]  # the console path writes the same fields
    documented = set()
    for line in readme_logs_section().splitlines():
        cells = [c.strip() for c in line.strip().split("|")[1:-1]]
        if len(cells) == 2:
            documented.update(re.findall(r"`([a-z0-9_]+)`", cells[0]))
    assert not fields - documented, f"access fields not documented: {fields - documented}"


# -- a request refused from the rate limiter's queue logs the time it waited ---------------


class SlowBusy:
    """An upstream whose /busy is held until ``release`` is set, then answered 429 "come
    back in an hour"; anything else gets 200."""

    def __init__(self) -> None:
        self.arrived = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                await read_body(reader, head)
                if head.startswith(b"GET /busy "):
                    self.arrived.set()
                    await self.release.wait()
                    writer.write(b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 3600\r\n"
                                 b"Content-Length: 0\r\n\r\n")
                else:
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        writer.close()


async def _get(port: int, path: str) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET %b HTTP/1.1\r\nHost: api.moex.com\r\nConnection: close\r\n\r\n"
                     % path.encode())
        return await asyncio.wait_for(reader.read(), 20)
    finally:
        writer.close()


async def test_a_request_refused_from_the_queue_logs_its_wait(
    make_sidecar: SidecarFactory, sandbox: SandboxStack, capsys: pytest.CaptureFixture[str],
) -> None:
    """One request every 10 s: the second queues behind /busy, whose 429 pauses the upstream
    for an hour and refuses the queue. Its access line says how long it had queued (the
    0.5 s it was held in the queue, at least), not 0."""
    upstream = SlowBusy()
    server = await start_upstream(sandbox, upstream, "busy")
    try:
        port = server.sockets[0].getsockname()[1]
        sidecar = await make_sidecar({
            "target": f"https://127.0.0.1:{port}",
            "rate_limit": {"rps": 0.1, "burst": 1, "max_wait": 30},
        })
        limiter = sidecar.upstreams["moex-ntb"].limiter
        assert limiter is not None
        capsys.readouterr()
        busy = asyncio.create_task(_get(sidecar.proxy_port, "/busy"))
        await asyncio.wait_for(upstream.arrived.wait(), 20)  # it took the only slot
        queued = asyncio.create_task(_get(sidecar.proxy_port, "/queued"))
        while limiter.queue_length == 0:
            assert not queued.done(), await queued
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.5)
        upstream.release.set()  # the 429 for /busy: its pause refuses /queued
        assert (await busy).startswith(b"HTTP/1.1 429 ")
        answer = await queued
        assert answer.startswith(b"HTTP/1.1 429 ") and b'"rate_limited"' in answer
    finally:
        upstream.release.set()
        server.close()
    logs.access_log.flush()
    lines: list[dict[str, Any]] = []
    for text in capsys.readouterr().out.splitlines():
        with contextlib.suppress(ValueError):
            lines.append(json.loads(text))
    [line] = [x for x in lines if x.get("event") == "request" and x["path"] == "/queued"]
    assert line["refused"] == "rate_limited" and line["status"] == 429
    assert line["queued_s"] >= 0.5, line
