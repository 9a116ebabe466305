"""Bad ``json_login`` blocks: each error names the field and the fix, and never a secret."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sidecar.config import ConfigError, validate_config
from sidecar.config.auth import JsonLoginAuth
from sidecar.config.files import config_files
from tests.helpers.config_files import UP, base, upstream

SECRET = "Pw-json-login-4c1d"


def with_auth(**auth: Any) -> dict[str, Any]:
    data = base()
    upstream(data)["auth"] = {
        "type": "json_login",
        "username": "user",
        "password": SECRET,
        "login": {"url": "https://api.example/login",
                  "json": {"login": "{username}", "password": "{password}"}},
        **auth,
    }
    return data


def problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        validate_config(data)
    assert all(SECRET not in line for line in info.value.problems)
    return info.value.problems


def test_a_complete_block_validates_and_its_secret_files_are_watched(tmp_path: Path) -> None:
    key = tmp_path / "api-key"
    key.write_text("k-123\n")
    data = with_auth(
        secrets={"api_key_file": str(key)},
        refresh={"url": "https://api.example/refresh", "form": {"rt": "{refresh_token}"},
                 "headers": {"X-Key": "{api_key}"}},
        answer={"token": "header:X-Auth-Token", "refresh_token": "cookie:RT",
                "expires_at": "/session/expiresAt"},
        token_header="X-Auth-Token", token_prefix="",
    )
    upstream(data)["set_headers"] = {"Accept": "*/*"}
    config = validate_config(data)
    auth = config.upstreams["moex-ntb"].auth
    assert auth.secrets["api_key"].get_secret_value() == "k-123"  # type: ignore[union-attr]
    assert key in config_files(config)


@pytest.mark.parametrize(
    ("auth", "where", "fix"),
    [
        ({"answer": {"token": "accessToken"}}, f"{UP}.auth.answer.token",
         "write '/accessToken'"),
        ({"answer": {"token": "data.token"}}, f"{UP}.auth.answer.token", "'/data/token'"),
        ({"answer": {"expires_in": "/a", "expires_at": "/b"}}, f"{UP}.auth.answer",
         "expires_in or expires_at, not both"),
        ({"answer": {"expires_in_unit": "min"}}, f"{UP}.auth.answer.expires_in_unit", "'s'"),
        ({"login": {"url": "https://a/l", "json": {"p": "{pasword}"}}}, f"{UP}.auth",
         "login.json.p: unknown placeholder {pasword}; known: {password}, {username}"),
        ({"login": {"url": "https://a/l", "json": {}, "form": {}}}, f"{UP}.auth.login",
         "json or as form, not both"),
        ({"login": {"url": "api.example/login"}}, f"{UP}.auth.login.url", "https://"),
        ({"refresh": {"url": "https://a/r", "form": {"t": "x"}}}, f"{UP}.auth",
         "refresh never uses {refresh_token}"),
        ({"refresh": {"url": "https://a/r", "form": {"t": "{refresh_token}"}}}, f"{UP}.auth",
         "refresh needs answer.refresh_token"),
        ({"login": {"url": "https://a/l", "form": {"t": "{refresh_token}"}}}, f"{UP}.auth",
         "unknown placeholder {refresh_token}"),
        ({"failure": {"refused": {"statuses": [400]}, "retry": {"statuses": [400]}}},
         f"{UP}.auth.failure", "in both refused and retry"),
        ({"secrets": {"Password": "x"}}, f"{UP}.auth", "secrets.Password: a secret's name"),
        ({"secrets": {"key_file": "/nonexistent/key"}}, f"{UP}.auth",
         "secrets.key_file: cannot read /nonexistent/key"),
        ({"token_header": "Content-Length"}, f"{UP}.auth", "framing header"),
        ({"answre": {}}, f"{UP}.auth.answre", "unknown field"),
    ],
)
def test_mistakes_name_the_field_and_the_fix(auth: dict[str, Any], where: str, fix: str) -> None:
    found = problems(with_auth(**auth))
    lines = [p for p in found if p.startswith(where + ":")]
    assert lines and fix in lines[0], found


def test_password_placeholder_without_a_password() -> None:
    data = with_auth()
    del upstream(data)["auth"]["password"]
    (line,) = problems(data)
    assert "login.json.password uses {password}: give password (or password_file)" in line


def test_plain_http_login_url_is_refused() -> None:
    data = with_auth(login={"url": "http://api.example/login", "json": {}})
    (line,) = problems(data)
    assert line.startswith(f"{UP}.auth.login.url: plain http://")


def test_set_headers_cannot_touch_framing_or_the_token() -> None:
    data = with_auth(token_header="X-Auth-Token")
    upstream(data)["set_headers"] = {"Host": "x"}
    assert "remove it from set_headers" in problems(data)[0]
    upstream(data)["set_headers"] = {"x-auth-token": "x"}
    assert "carries the token" in problems(data)[0]


def test_the_xtrace_example_is_valid(tmp_path: Path) -> None:
    from sidecar.config import load_config

    secret = tmp_path / "password"
    secret.write_text("x")
    repo = Path(__file__).resolve().parents[2]
    environ = {f"SIDECAR_UPSTREAMS__XTRACE_{stand}__AUTH__PASSWORD_FILE": str(secret)
               for stand in ("TEST", "PROD")}
    config = load_config(repo / "config/mpt-xtrace.yaml", environ=environ)
    for stand in ("test", "prod"):
        up = config.upstreams[f"xtrace-{stand}"]
        assert up.set_headers == {"Accept": "*/*"}
        auth = up.auth
        assert isinstance(auth, JsonLoginAuth)
        assert auth.login.url == f"https://{stand}.markirovka.kz/api/users/authenticate"
        assert auth.refresh is not None and auth.refresh.form == {
            "refreshToken": "{refresh_token}"}
        assert auth.answer.expires_in_unit == "ms" and auth.answer.expires_in_string
