"""Secrecy is read from the models: every ``SecretStr`` field is secret whatever its name, has
an ``x_file`` twin, is masked by ``check``, registered for the logs, and its input is never
shown in an error (a numeric PIN included), nor in a rejected reload's log line."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, Counter
from pydantic import BaseModel, SecretStr

from sidecar import logs
from sidecar.config import (
    Config,
    ConfigError,
    fields,
    load_config,
    models,
    redacted,
    sections,
    validate_config,
)
from sidecar.config import auth as m
from sidecar.config.secrets import secret_fields, secret_file_twins, secret_values
from sidecar.reload import Reloader
from tests.helpers.cli import check
from tests.helpers.config_files import write

PIN = 98765432
PASSWORD = 86421357


def _signed(tmp_path: Path) -> dict[str, Any]:
    """A MOEX Passport upstream whose login signs through a command with a PIN."""
    return {
        "upstreams": {
            "moex-registration": {
                "match": ["play-apim.moex.com"],
                "target": "https://play-apim.moex.com",
                "auth": {
                    "type": "moex_passport",
                    "passport_url": "https://passport.moex.com/authenticate",
                    "token_url": "https://sso.moex.com/token",
                    "client_id": "moex_registration",
                    "client_secret": "client-secret-5d1",
                    "username": "trader",
                    "password": "pw-3c9",
                    "signer": {
                        "type": "command",
                        "command": {"argv": ["cryptcp", "-pin", "{pin}"], "pin": "pin-7a2"},
                    },
                },
            }
        }
    }


def _auth(data: dict[str, Any]) -> dict[str, Any]:
    return data["upstreams"]["moex-registration"]["auth"]


def _numeric_secrets(tmp_path: Path) -> dict[str, Any]:
    data = _signed(tmp_path)
    _auth(data)["signer"]["command"]["pin"] = PIN
    _auth(data)["password"] = PASSWORD
    return data


def test_numeric_pin_and_password_are_not_echoed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        validate_config(_numeric_secrets(tmp_path))
    up = "upstreams.moex-registration.auth"
    assert sorted(info.value.problems) == [
        f"{up}.password: Input should be a valid string",
        f"{up}.signer.command.pin: Input should be a valid string",
    ]
    assert str(PIN) not in str(info.value) and str(PASSWORD) not in str(info.value)


def test_check_never_prints_a_numeric_pin(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", yaml.safe_dump(_numeric_secrets(tmp_path)))
    result = check(tmp_path, path)
    assert result.returncode == 2
    assert "signer.command.pin: Input should be a valid string" in result.stderr
    assert str(PIN) not in result.stderr + result.stdout
    assert str(PASSWORD) not in result.stderr + result.stdout


class _Running:
    """What the reloader drives, reduced to what a rejected reload touches."""

    def __init__(self) -> None:
        self.reload_counter = Counter(
            "reloads", "reloads", ["result"], registry=CollectorRegistry()
        )

    async def apply(self, config: Config, changed_files: set[Path] | None = None) -> None:
        raise AssertionError("a config that does not validate is never applied")


async def test_rejected_reload_log_never_shows_a_numeric_pin(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path / "c.yaml", yaml.safe_dump(_numeric_secrets(tmp_path)))
    logs.configure("info", "json")
    capsys.readouterr()
    assert await Reloader(_Running(), path, environ={}).reload("SIGHUP") is False
    out = capsys.readouterr().out
    [line] = [json.loads(x) for x in out.splitlines() if "config_reload_rejected" in x]
    assert any("signer.command.pin" in p for p in line["problems"])
    assert str(PIN) not in out and str(PASSWORD) not in out


def test_secret_from_env_with_a_numeric_value_stays_secret(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", yaml.safe_dump(_signed(tmp_path)))
    environ = {"SIDECAR_UPSTREAMS__MOEX_REGISTRATION__AUTH__SIGNER__COMMAND__PIN": "00123"}
    config = load_config(path, environ)
    auth = config.upstreams["moex-registration"].auth
    assert isinstance(auth, m.MoexPassportAuth) and isinstance(auth.signer, m.CommandSigning)
    assert auth.signer.command.pin == SecretStr("00123")
    assert "00123" not in yaml.safe_dump(redacted(config))


def _models() -> list[type[BaseModel]]:
    """Every config model, whichever module of the package defines it."""
    return [
        v for module in (fields, sections, m, models) for v in vars(module).values()
        if isinstance(v, type) and issubclass(v, BaseModel) and v.__module__ == module.__name__
    ]


def test_secret_fields_are_every_secretstr_field() -> None:
    found = {(model.__name__, name) for model in _models() for name in secret_fields(model)}
    assert found >= {
        ("Tls", "p12_password"),
        ("OidcPasswordAuth", "password"),
        ("OidcPasswordAuth", "client_secret"),
        ("ClientCredentialsAuth", "client_secret"),
        ("Wso2PasswordAuth", "consumer_secret"),
        ("MoexPassportAuth", "client_secret"),
        ("CommandSignerConfig", "pin"),
        ("NcaNodeSignerConfig", "p12_password"),
        ("Pkcs7Signing", "key_password"),
        ("StaticAuth", "token"),
    }
    assert not secret_fields(models.Upstream) and not secret_fields(m.MptSigninAuth)
    # only a SecretFiles block reads x_file twins: every block with a secret must be one
    assert all(issubclass(model, fields.SecretFiles) for model in _models() if secret_fields(model))
    # static auth's token_file is a path the flow re-reads, not a file read once at load
    assert "token_file" not in secret_file_twins(m.StaticAuth)


@pytest.mark.parametrize(
    ("where", "field"),
    [(("signer", "command"), "pin"), (("signer",), "key_password"), ((), "client_secret")],
)
def test_every_secret_has_a_file_twin(tmp_path: Path, where: tuple[str, ...], field: str) -> None:
    data = _signed(tmp_path)
    if where == ("signer",):
        cert = write(tmp_path / "c.pem", "x")
        _auth(data)["signer"] = {"type": "pkcs7", "cert_file": str(cert), "key_file": str(cert)}
    block = _auth(data)
    for key in where:
        block = block[key]
    block.pop(field, None)
    block[f"{field}_file"] = str(write(tmp_path / field, "from-a-file-61e\n"))
    config = validate_config(copy.deepcopy(data))
    assert "from-a-file-61e" in secret_values(config)
    assert "from-a-file-61e" not in yaml.safe_dump(redacted(config))


def test_logs_register_what_check_masks(tmp_path: Path) -> None:
    config = validate_config(_signed(tmp_path))
    assert sorted(secret_values(config)) == ["client-secret-5d1", "pin-7a2", "pw-3c9"]
    logs.configure_for(config)
    assert logs.secrets.scrub("pin is pin-7a2") == "pin is ***"


def test_a_secret_file_given_a_number_is_a_config_error(tmp_path: Path) -> None:
    data = _signed(tmp_path)
    del _auth(data)["password"]
    _auth(data)["password_file"] = 42
    with pytest.raises(ConfigError) as info:
        validate_config(data)
    assert info.value.problems == [
        "upstreams.moex-registration.auth.password_file: expected a file path"
    ]
