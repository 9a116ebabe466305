"""Redaction: secret-named keys and registered secret values never reach a log line."""

from __future__ import annotations

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
