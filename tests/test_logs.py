"""Redaction: secret-named keys and registered secret values never reach a log line."""

from __future__ import annotations

import json
import re

import pytest
import structlog

from sidecar import logs


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
