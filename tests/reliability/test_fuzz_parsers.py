"""Fuzzing what the sidecar reads from outside: the config, and every IdP and gateway answer.
Whatever the input, parsing raises nothing but the project's own clear errors."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.auth import jwt
from sidecar.auth.base import AuthError
from sidecar.auth.moex_passport import passport_cookie
from sidecar.auth.oauth import parse_token_response
from sidecar.auth.wso2 import fault_code
from sidecar.config import ConfigError, validate_config
from sidecar.config.loader import apply_env_overrides
from sidecar.proxy.ratelimit import retry_after_seconds
from sidecar.proxy.router import BadTarget, request_target

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=30)
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                max_size=5),
    max_leaves=25,
)
KEYS = ["listen", "log", "upstreams", "passthrough", "shutdown", "reload", "match", "target",
        "tls", "auth", "type", "token_url", "client_id", "password", "password_file", "headers",
        "rate_limit", "rps", "signer", "proxy", "admin", "max_body", "static", "token"]
config_like = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(KEYS) | st.text(max_size=8), inner, max_size=5),
    max_leaves=30,
)


@settings(max_examples=400, deadline=None)
@given(data=st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8) | st.integers(),
                            config_like, max_size=6))
def test_config_validation_raises_only_config_errors(data: dict[Any, Any]) -> None:
    try:
        validate_config(data)
    except ConfigError as exc:
        assert exc.problems and all(isinstance(p, str) and p for p in exc.problems)


@settings(max_examples=200, deadline=None)
@given(env=st.dictionaries(st.text(max_size=40).map(lambda s: "SIDECAR_" + s), st.text(max_size=30),
                           max_size=5))
def test_env_overrides_never_crash(env: dict[str, str]) -> None:
    data: dict[str, Any] = {"upstreams": {"moex-ntb": {"match": ["a.b"]}}}
    apply_env_overrides(data, env)
    try:
        validate_config(data)
    except ConfigError:
        pass


@settings(max_examples=400, deadline=None)
@given(status=st.integers(100, 599), body=st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(st.sampled_from(["access_token", "expires_in", "refresh_token",
                                     "refresh_expires_in", "error", "error_description"]),
                    json_values, max_size=6).map(lambda d: json.dumps(d).encode()),
), retry_after=st.none() | st.text(max_size=20))
def test_token_answers_parse_or_raise_auth_error(
    status: int, body: bytes, retry_after: str | None
) -> None:
    try:
        grant = parse_token_response(status, body, retry_after)
    except AuthError as exc:
        assert exc.reason
        return
    assert status == 200 and grant.access_token
    assert grant.expires_in is None or 0 < grant.expires_in <= 24 * 3600


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode()))
def test_gateway_faults_never_crash(raw: bytes) -> None:
    code = fault_code(raw)
    assert code is None or isinstance(code, int)


@settings(max_examples=300, deadline=None)
@given(token=st.text(max_size=200))
def test_jwt_expiry_never_crashes(token: str) -> None:
    exp = jwt.expiry(token)
    assert exp is None or isinstance(exp, float)


@settings(max_examples=300, deadline=None)
@given(headers=st.lists(st.text(max_size=80), max_size=5))
def test_passport_cookie_never_crashes(headers: list[str]) -> None:
    value = passport_cookie(headers)
    assert value is None or (isinstance(value, str) and value)


@settings(max_examples=300, deadline=None)
@given(target=st.text(max_size=60), host=st.none() | st.text(max_size=30))
def test_request_targets_parse_or_raise_bad_target(target: str, host: str | None) -> None:
    try:
        parsed = request_target(target, host)
    except BadTarget:
        return
    assert 0 <= parsed.port <= 65535 and parsed.path_qs.startswith("/")


@given(value=st.none() | st.text(max_size=40))
def test_retry_after_never_crashes(value: str | None) -> None:
    assert retry_after_seconds(value, 30) >= 0
