"""Fuzzing what the sidecar reads from outside: the config, and every IdP and gateway answer.
Whatever the input, parsing raises nothing but the project's own clear errors."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from sidecar.auth import jwt
from sidecar.auth.base import AuthError
from sidecar.auth.moex_passport import passport_cookie
from sidecar.auth.oauth import parse_token_response
from sidecar.auth.wso2 import fault_code
from sidecar.config import ConfigError, validate_config
from sidecar.config.loader import apply_env_overrides
from sidecar.http1.retry_after import MAX_RETRY_AFTER, parse_retry_after, retry_after_or_default
from sidecar.proxy.router import BadTarget, request_target


def examples(count: int) -> int:
    """A test's example count: as written under the derandomized ci profile, at least the
    profile's own when fuzzing (make fuzz)."""
    default = settings.default
    return count if default.derandomize else max(count, default.max_examples)


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


@settings(max_examples=examples(400))
@given(data=st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8) | st.integers(),
                            config_like, max_size=6))
def test_config_validation_raises_only_config_errors(data: dict[Any, Any]) -> None:
    try:
        validate_config(data)
    except ConfigError as exc:
        assert exc.problems and all(isinstance(p, str) and p for p in exc.problems)


@settings(max_examples=examples(200))
@given(env=st.dictionaries(st.text(max_size=40).map(lambda s: "SIDECAR_" + s), st.text(max_size=30),
                           max_size=5))
def test_env_overrides_never_crash(env: dict[str, str]) -> None:
    data: dict[str, Any] = {"upstreams": {"moex-ntb": {"match": ["a.b"]}}}
    apply_env_overrides(data, env)
    try:
        validate_config(data)
    except ConfigError:
        pass


@settings(max_examples=examples(400))
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


@settings(max_examples=examples(300))
@given(raw=st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode()))
def test_gateway_faults_never_crash(raw: bytes) -> None:
    code = fault_code(raw)
    assert code is None or isinstance(code, int)


@settings(max_examples=examples(300))
@given(token=st.text(max_size=200))
def test_jwt_expiry_never_crashes(token: str) -> None:
    exp = jwt.expiry(token)
    assert exp is None or isinstance(exp, float)


@settings(max_examples=examples(300))
@given(headers=st.lists(st.text(max_size=80), max_size=5))
def test_passport_cookie_never_crashes(headers: list[str]) -> None:
    value = passport_cookie(headers)
    assert value is None or (isinstance(value, str) and value)


@settings(max_examples=examples(300))
@given(target=st.text(max_size=60), host=st.none() | st.text(max_size=30))
def test_request_targets_parse_or_raise_bad_target(target: str, host: str | None) -> None:
    try:
        parsed = request_target(target, host)
    except BadTarget:
        return
    assert 0 <= parsed.port <= 65535 and parsed.path_qs.startswith("/")


retry_after_like = st.one_of(
    st.none(),
    st.text(max_size=40),
    st.from_regex(r"\A[ \t]*[0-9]{1,500}[ \t]*\Z"),
    st.datetimes().map(lambda d: d.strftime("%a, %d %b %Y %H:%M:%S GMT")),
)


@settings(max_examples=examples(300))
@example("²")  # str.isdigit() accepts it, float() does not
@example("9" * 400)  # float() of it is inf: math.ceil(inf) raised on every later request
@example("1" + "0" * 5000)  # int() refuses over 4,300 digits
@example("Fri, 31 Dec 9999 23:59:59 GMT")
@example("Mon, 01 Jan 0001 00:00:00 GMT")
@example("-1")
@given(value=retry_after_like)
def test_retry_after_never_crashes(value: str | None) -> None:
    seconds = parse_retry_after(value)
    assert seconds is None or 0 <= seconds <= MAX_RETRY_AFTER
    assert 0 <= retry_after_or_default(value) <= MAX_RETRY_AFTER
