"""Plain http:// to an IdP sends credentials in clear: refused unless the upstream says
``allow_plaintext: true``. A plain-http target is only warned about."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecar.config import ConfigError, config_warnings, load_config, validate_config
from tests.helpers.cli import check
from tests.helpers.config_files import MINIMAL_YAML, write

UP = "upstreams.moex-ntb"
FIX = f"use https://, or set {UP}.allow_plaintext: true"


def base() -> dict[str, Any]:
    return copy.deepcopy(yaml.safe_load(MINIMAL_YAML))


def upstream(data: dict[str, Any]) -> dict[str, Any]:
    return data["upstreams"]["moex-ntb"]


def _passport(pem: Path) -> dict[str, Any]:
    return {
        "type": "moex_passport", "passport_url": "https://passport.moex.com/authenticate",
        "token_url": "https://sso.moex.com/token", "client_id": "c", "client_secret": "s",
        "username": "u", "password": "p",
        "signer": {"type": "pkcs7", "cert_file": str(pem), "key_file": str(pem)},
    }


def _mpt(pem: Path) -> dict[str, Any]:
    return {
        "type": "mpt_signin", "base_url": "https://stage.ismet.kz/api/v3/true-api",
        "signer": {"type": "pkcs7", "cert_file": str(pem), "key_file": str(pem)},
    }


@pytest.fixture
def pem(tmp_path: Path) -> Path:
    return write(tmp_path / "signer.pem", "x")


@pytest.mark.parametrize(
    ("auth", "field", "url"),
    [
        ("oidc", "token_url", "http://sso.moex.com/token"),
        ("client_credentials", "token_url", "HTTP://idp.example.com/token"),
        ("passport", "passport_url", "http://passport.moex.com/authenticate"),
        ("passport", "token_url", "http://sso.moex.com/token"),
        ("mpt", "base_url", "http://stage.ismet.kz/api/v3/true-api"),
    ],
)
def test_plain_http_idp_is_refused(pem: Path, auth: str, field: str, url: str) -> None:
    data = base()
    if auth == "client_credentials":
        upstream(data)["auth"] = {"type": "client_credentials", "token_url": url,
                                  "client_id": "c", "client_secret": "s"}
    elif auth == "passport":
        upstream(data)["auth"] = _passport(pem) | {field: url}
    elif auth == "mpt":
        upstream(data)["auth"] = _mpt(pem) | {field: url}
    else:
        upstream(data)["auth"][field] = url
    with pytest.raises(ConfigError) as info:
        validate_config(data)
    assert info.value.problems == [
        f"{UP}.auth.{field}: plain http:// would send credentials in clear; {FIX}"
    ]

    upstream(data)["allow_plaintext"] = True
    assert validate_config(data).upstreams["moex-ntb"].allow_plaintext is True


def test_allow_plaintext_from_the_environment(tmp_path: Path) -> None:
    text = MINIMAL_YAML.replace("https://sso.moex.com/token", "http://127.0.0.1:8080/token")
    path = write(tmp_path / "c.yaml", text)
    with pytest.raises(ConfigError):
        load_config(path, environ={})
    config = load_config(path, environ={"SIDECAR_UPSTREAMS__MOEX_NTB__ALLOW_PLAINTEXT": "true"})
    assert config.upstreams["moex-ntb"].auth.token_url.startswith("http://")  # type: ignore[union-attr]


def test_plain_http_ncanode_is_allowed(pem: Path) -> None:
    data = base()
    upstream(data)["auth"] = _mpt(pem) | {
        "signer": {"type": "ncanode",
                   "ncanode": {"url": "http://127.0.0.1:14579", "p12_file": str(pem),
                               "p12_password": "x"}},
    }
    validate_config(data)  # a local service, no credentials of the upstream go there


def test_plain_http_target_is_a_warning_not_an_error(tmp_path: Path) -> None:
    data = base()
    upstream(data)["target"] = "http://api.moex.com"
    config = validate_config(data)
    [warning] = config_warnings(config)
    assert warning.startswith(f"{UP}.target: plain http://") and warning.endswith(FIX)

    result = check(tmp_path, write(tmp_path / "c.yaml", yaml.safe_dump(data)))
    assert result.returncode == 0, result.stderr
    assert result.stderr == f"warning: {warning}\n"

    upstream(data)["allow_plaintext"] = True
    assert config_warnings(validate_config(data)) == []


def test_https_everywhere_has_no_warning() -> None:
    assert config_warnings(validate_config(base())) == []
