"""Token endpoint answers (RFC 6749 §5, Keycloak's error bodies) become Grants or clear errors."""

from __future__ import annotations

import json

import pytest

from sidecar.auth.base import AuthError, InvalidGrant
from sidecar.auth.oauth import MAX_LIFETIME, parse_token_response


def _body(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def test_keycloak_answer() -> None:
    grant = parse_token_response(
        200,
        _body(
            access_token="eyJ.a.b", expires_in=300, refresh_expires_in=1800,
            refresh_token="eyJ.r.t", token_type="Bearer", scope="openid email profile",
        ),
    )
    assert grant.access_token == "eyJ.a.b"
    assert grant.expires_in == 300 and grant.refresh_expires_in == 1800
    assert grant.refresh_token == "eyJ.r.t"
    assert "eyJ" not in repr(grant)  # reprs never show tokens


@pytest.mark.parametrize(
    ("status", "body", "kind", "reason"),
    [
        (400, _body(error="invalid_grant", error_description="Token is not active"),
         InvalidGrant, "IdP answered 400 invalid_grant: Token is not active"),
        (400, _body(error="invalid_grant", error_description="Session not active"),
         InvalidGrant, "IdP answered 400 invalid_grant: Session not active"),
        (401, _body(error="invalid_client", error_description="Invalid client credentials"),
         AuthError, "IdP answered 401 invalid_client: Invalid client credentials"),
        (500, b"<html>oops</html>", AuthError, "IdP answered 500 with a non-JSON body"),
        (200, b"not json", AuthError, "IdP answered 200 without a JSON object"),
        (200, _body(token_type="Bearer"), AuthError, "IdP answered 200 without an access_token"),
        (200, _body(access_token="x", expires_in=0), AuthError, "unusable expires_in: 0"),
        (200, _body(access_token="x", expires_in=-5), AuthError, "unusable expires_in: -5"),
        (200, _body(access_token="x", expires_in="soon"), AuthError, "not a number"),
    ],
)
def test_errors(status: int, body: bytes, kind: type[Exception], reason: str) -> None:
    with pytest.raises(AuthError) as caught:
        parse_token_response(status, body)
    assert type(caught.value) is kind
    assert reason in caught.value.reason


def test_rate_limited_idp_says_when_to_come_back() -> None:
    with pytest.raises(AuthError) as caught:
        parse_token_response(429, b"{}", retry_after="7")
    assert caught.value.retry_after == 7


def test_huge_lifetime_is_clamped_and_missing_lifetime_left_to_manager() -> None:
    huge = parse_token_response(200, _body(access_token="x", expires_in=10**9))
    assert huge.expires_in == MAX_LIFETIME
    assert parse_token_response(200, _body(access_token="x")).expires_in is None
