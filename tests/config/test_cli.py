"""``sidecar check`` as a user runs it: a real subprocess with a controlled environment."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12

from sidecar.sandbox.pki import Pki
from tests.helpers.cli import check, run_sidecar
from tests.helpers.config_files import (
    ALL_SECRETS,
    MINIMAL_YAML,
    P12_PASSWORD,
    Files,
    full_yaml,
    make_files,
    write,
)


@pytest.fixture
def files(tmp_path: Path) -> Files:
    """The helpers' files with real certificate material: check builds the TLS contexts."""
    made = make_files(tmp_path / "secrets")
    pki = Pki(tmp_path / "pki")
    client = pki.issue_client("client")
    made.ca.write_bytes(pki.ca_file.read_bytes())
    made.cert.write_bytes(client.cert_file.read_bytes())
    made.key.write_bytes(client.key_file.read_bytes())
    key = serialization.load_pem_private_key(client.key_file.read_bytes(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    made.p12.write_bytes(pkcs12.serialize_key_and_certificates(
        b"client", key, client.cert, None,
        serialization.BestAvailableEncryption(P12_PASSWORD.encode()),
    ))
    return made


def test_check_prints_effective_config(tmp_path: Path, files: Files) -> None:
    path = write(tmp_path / "full.yaml", full_yaml(files))
    result = check(tmp_path, path)

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    printed = yaml.safe_load(result.stdout)
    assert list(printed["upstreams"]) == ["moex-ntb", "kisc", "static-api", "static-file"]
    assert printed["listen"] == {
        "proxy": "127.0.0.1:18080", "admin": "127.0.0.1:19090", "idle_timeout": 75.0,
        "max_connections": 1024, "admin_max_connections": 64, "expose_status": False,
    }
    assert printed["log"] == {"level": "debug", "format": "console"}
    assert printed["passthrough"] == ["github.com", "pypi.org:443"]
    ntb = printed["upstreams"]["moex-ntb"]
    assert ntb["match"] == ["api.moex.com", "api.moex.com:8443"]
    assert ntb["target"] == "https://api.moex.com"
    assert ntb["tls"]["cert_file"] == str(files.cert)
    assert ntb["auth"]["username"] == "trader"
    assert ntb["auth"]["password"] == "***"
    assert ntb["auth"]["client_secret"] == "***"
    assert ntb["timeouts"] == {"connect": 3, "read": 30.5, "token_wait": 7}
    assert ntb["replay_limit"] == 4096 and ntb["max_body"] == 65536 and ntb["eager"] is False
    assert printed["upstreams"]["kisc"]["tls"]["p12_password"] == "***"
    assert printed["upstreams"]["kisc"]["auth"]["client_secret"] == "***"
    assert printed["upstreams"]["static-api"]["auth"]["token"] == "***"
    assert printed["upstreams"]["static-file"]["auth"]["token_file"] == str(files.token)

    assert "***" in result.stdout
    for secret in ALL_SECRETS:
        assert secret not in result.stdout


def test_check_shows_defaults(tmp_path: Path) -> None:
    result = check(tmp_path, write(tmp_path / "min.yaml", MINIMAL_YAML))
    assert result.returncode == 0, result.stderr
    printed = yaml.safe_load(result.stdout)
    assert printed["listen"] == {
        "proxy": "127.0.0.1:8080", "admin": "0.0.0.0:9090", "idle_timeout": 75.0,
        "max_connections": 1024, "admin_max_connections": 64, "expose_status": False,
    }
    ntb = printed["upstreams"]["moex-ntb"]
    assert ntb["replay_limit"] == 1048576
    assert ntb["timeouts"] == {"connect": 10, "read": 60, "token_wait": 10}
    assert ntb["eager"] is True and ntb["tls"]["verify"] is True
    assert "plain-password-1d2e" not in result.stdout


def test_check_applies_env_overrides(tmp_path: Path) -> None:
    path = write(tmp_path / "min.yaml", MINIMAL_YAML)
    env = {
        "SIDECAR_LISTEN__PROXY": "127.0.0.1:7001",
        "SIDECAR_UPSTREAMS__MOEX_NTB__AUTH__PASSWORD": "0123456789",
        "SIDECAR_UPSTREAMS__MOEX_NTB__MATCH": "[a.example.com, b.example.com]",
    }
    result = check(tmp_path, path, env)
    assert result.returncode == 0, result.stderr
    printed = yaml.safe_load(result.stdout)
    assert printed["listen"]["proxy"] == "127.0.0.1:7001"
    assert list(printed["upstreams"]) == ["moex-ntb"]
    assert printed["upstreams"]["moex-ntb"]["match"] == ["a.example.com", "b.example.com"]
    assert printed["upstreams"]["moex-ntb"]["auth"]["password"] == "***"
    assert "0123456789" not in result.stdout


def test_check_uses_sidecar_config(tmp_path: Path) -> None:
    path = write(tmp_path / "min.yaml", MINIMAL_YAML)
    result = run_sidecar(tmp_path, "check", env={"SIDECAR_CONFIG": str(path)})
    assert result.returncode == 0, result.stderr
    assert list(yaml.safe_load(result.stdout)["upstreams"]) == ["moex-ntb"]


def test_check_bad_config_exits_2_with_field_path(tmp_path: Path) -> None:
    text = MINIMAL_YAML.replace("https://sso.moex.com/token", "sso.moex.com/token")
    result = check(tmp_path, write(tmp_path / "bad.yaml", text))
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[0] == "config error:"
    assert len(lines) == 2
    assert lines[1].strip().startswith("upstreams.moex-ntb.auth.token_url: not a valid URL")
    assert "plain-password-1d2e" not in result.stderr


def test_check_lists_every_problem_on_its_own_line(tmp_path: Path) -> None:
    text = (
        MINIMAL_YAML.replace("target:", "tagret:").replace("https://sso.moex.com/token", "x")
        + "listen: {proxy: example.com:80}\n"
    )
    result = check(tmp_path, write(tmp_path / "bad.yaml", text))
    assert result.returncode == 2
    lines = [line.strip() for line in result.stderr.splitlines()]
    assert lines[0] == "config error:"
    paths = {line.split(":")[0] for line in lines[1:]}
    assert paths == {
        "listen.proxy",
        "upstreams.moex-ntb.tagret",
        "upstreams.moex-ntb.target",
        "upstreams.moex-ntb.auth.token_url",
    }


def test_check_missing_config_file(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.yaml"
    result = check(tmp_path, missing)
    assert result.returncode == 2
    assert result.stdout == ""
    assert "config error:" in result.stderr
    assert f"config file not found: {missing}" in result.stderr


def test_check_without_any_config(tmp_path: Path) -> None:
    result = run_sidecar(tmp_path, "check")
    assert result.returncode == 2
    assert "no config file: pass --config PATH or set SIDECAR_CONFIG" in result.stderr


def test_check_missing_password_file_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "run" / "password"
    text = MINIMAL_YAML.replace("password: plain-password-1d2e", f"password_file: {missing}")
    result = check(tmp_path, write(tmp_path / "c.yaml", text))
    assert result.returncode == 2
    assert f"upstreams.moex-ntb.auth.password_file: file not found: {missing}" in result.stderr


def test_check_missing_cert_file_names_it(tmp_path: Path, files: Files) -> None:
    missing = tmp_path / "client.crt"
    text = MINIMAL_YAML.replace(
        "    auth:\n", f"    tls: {{cert_file: {missing}, key_file: {files.key}}}\n    auth:\n"
    )
    result = check(tmp_path, write(tmp_path / "c.yaml", text))
    assert result.returncode == 2
    assert f"upstreams.moex-ntb.tls.cert_file: file not found: {missing}" in result.stderr


def test_check_invalid_yaml(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", "upstreams:\n  moex-ntb: {match: [a\n")
    result = check(tmp_path, path)
    assert result.returncode == 2
    assert f"{path}: not valid YAML at line 3" in result.stderr


def test_check_does_not_echo_invalid_secret(tmp_path: Path) -> None:
    text = MINIMAL_YAML.replace("password: plain-password-1d2e", "password: 86421357")
    result = check(tmp_path, write(tmp_path / "c.yaml", text))
    assert result.returncode == 2
    assert "upstreams.moex-ntb.auth.password:" in result.stderr
    assert "86421357" not in result.stderr


def test_check_non_utf8_config_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes(b"upstreams:\n  moex-ntb: \xff\xfe\n")
    result = check(tmp_path, path)
    assert result.returncode == 2


def test_check_non_string_key_exits_2(tmp_path: Path) -> None:
    result = check(tmp_path, write(tmp_path / "c.yaml", MINIMAL_YAML + "8080: proxy\n"))
    assert result.returncode == 2
