"""The files a config names, read from the validated models (sidecar.config.files)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.config import (
    ConfigError,
    config_files,
    load_config,
    referenced_files,
    signer_files,
    tls_files,
)
from tests.helpers.config_files import MINIMAL_YAML, Files, full_yaml, make_files, write


@pytest.fixture
def files(tmp_path: Path) -> Files:
    return make_files(tmp_path / "secrets")


def test_every_file_of_the_full_config(tmp_path: Path, files: Files) -> None:
    path = write(tmp_path / "full.yaml", full_yaml(files))
    named = {files.ca, files.cert, files.key, files.p12, files.password, files.cc_secret,
             files.p12_password, files.token}
    assert config_files(load_config(path, environ={})) == named
    assert referenced_files(path, environ={}) == named | {path}


def test_per_upstream_tls_files(tmp_path: Path, files: Files) -> None:
    config = load_config(write(tmp_path / "full.yaml", full_yaml(files)), environ={})
    assert tls_files(config.upstreams["moex-ntb"]) == {files.ca, files.cert, files.key}
    assert tls_files(config.upstreams["kisc"]) == {files.p12, files.p12_password}
    assert tls_files(config.upstreams["static-file"]) == set()
    assert signer_files(config.upstreams["moex-ntb"]) == set()


def test_auth_tls_and_signer_files(tmp_path: Path, files: Files) -> None:
    key_password = write(tmp_path / "key-password", "kp\n")
    text = f"""\
upstreams:
  mpt:
    match: [stage.ismet.kz]
    target: https://stage.ismet.kz
    tls: {{ca_file: "{files.ca}"}}
    auth:
      type: mpt_signin
      base_url: https://stage.ismet.kz/api/v3/true-api
      tls: {{cert_file: "{files.cert}", key_file: "{files.key}"}}
      signer:
        type: pkcs7
        cert_file: "{files.cert}"
        key_file: "{files.p12}"
        key_password_file: "{key_password}"
"""
    upstream = load_config(write(tmp_path / "mpt.yaml", text), environ={}).upstreams["mpt"]
    assert tls_files(upstream) == {files.ca, files.cert, files.key}
    assert signer_files(upstream) == {files.cert, files.p12, key_password}


def test_a_secret_file_named_by_an_env_variable_is_watched(tmp_path: Path) -> None:
    text = MINIMAL_YAML.replace("      password: plain-password-1d2e\n", "")
    path = write(tmp_path / "c.yaml", text)
    secret = write(tmp_path / "pw", "from-env\n")
    environ = {"SIDECAR_UPSTREAMS__MOEX_NTB__AUTH__PASSWORD_FILE": str(secret)}
    assert referenced_files(path, environ) == {path, secret}


def test_an_invalid_config_names_no_files(tmp_path: Path) -> None:
    # The reloader then keeps watching the files of the last good config.
    path = write(tmp_path / "c.yaml", MINIMAL_YAML.replace("https://api.moex.com\n", "x\n"))
    with pytest.raises(ConfigError):
        referenced_files(path, environ={})
