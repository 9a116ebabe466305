"""Config files for the loader and CLI tests: a full contract config and a minimal one."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

# Secret values used in the YAML and in secret files; none may ever be printed.
PASSWORD = "Pw-from-file-7f3a"
CLIENT_SECRET = "client-secret-inline-91c2"
CC_SECRET = "cc-secret-from-file-55d0"
P12_PASSWORD = "p12-pass-from-file-b8e4"
STATIC_TOKEN = "static-token-inline-0a6c"
FILE_TOKEN = "static-token-in-file-3e19"

ALL_SECRETS = (PASSWORD, CLIENT_SECRET, CC_SECRET, P12_PASSWORD, STATIC_TOKEN, FILE_TOKEN)


@dataclass
class Files:
    """Certificate, key and secret files in a temporary directory (content is not checked)."""

    ca: Path
    cert: Path
    key: Path
    p12: Path
    password: Path
    cc_secret: Path
    p12_password: Path
    token: Path


def make_files(root: Path) -> Files:
    root.mkdir(parents=True, exist_ok=True)

    def put(name: str, text: str) -> Path:
        path = root / name
        path.write_text(text, encoding="utf-8")
        return path

    return Files(
        ca=put("ca.pem", "-----BEGIN CERTIFICATE-----\n"),
        cert=put("client.crt", "-----BEGIN CERTIFICATE-----\n"),
        key=put("client.key", "-----BEGIN PRIVATE KEY-----\n"),
        p12=put("client.p12", "not really pkcs12"),
        password=put("password", PASSWORD + "\n"),
        cc_secret=put("client_secret", CC_SECRET + "\n"),
        p12_password=put("p12_password", P12_PASSWORD + "\n"),
        token=put("token", FILE_TOKEN + "\n"),
    )


def full_yaml(files: Files) -> str:
    """Every field of the contract that the models implement, none left at its default."""
    return f"""\
listen:
  proxy: 127.0.0.1:18080
  admin: 127.0.0.1:19090
log: {{level: debug, format: console}}
upstreams:
  moex-ntb:
    match: [api.moex.com, "API.MOEX.com:8443"]
    target: https://api.moex.com/
    tls:
      ca_file: "{files.ca}"
      cert_file: "{files.cert}"
      key_file: "{files.key}"
      verify: true
    auth:
      type: oidc_password
      token_url: https://sso.moex.com/auth/realms/SSO/protocol/openid-connect/token
      client_id: LK_NTB_PUBLIC
      username: trader
      password_file: "{files.password}"
      client_secret: "{CLIENT_SECRET}"
      scope: openid
    max_body: 65536
    replay_limit: 4096
    timeouts: {{connect: 3, read: 30.5, token_wait: 7}}
    eager: false
  kisc:
    match: [api.kisc.kz]
    target: https://api.kisc.kz/v1
    tls:
      p12_file: "{files.p12}"
      p12_password_file: "{files.p12_password}"
      verify: false
    auth:
      type: client_credentials
      token_url: https://idp.kisc.kz/oauth2/token
      client_id: kisc-app
      client_secret_file: "{files.cc_secret}"
  static-api:
    match: [static.example.com]
    target: http://static.example.com
    allow_plaintext: true
    auth: {{type: static, token: "{STATIC_TOKEN}"}}
  static-file:
    match: [file.example.com]
    target: https://file.example.com
    auth: {{type: static, token_file: "{files.token}"}}
passthrough: [github.com, "pypi.org:443"]
"""


MINIMAL_YAML = """\
upstreams:
  moex-ntb:
    match: [api.moex.com]
    target: https://api.moex.com
    auth:
      type: oidc_password
      token_url: https://sso.moex.com/token
      client_id: LK_NTB_PUBLIC
      username: trader
      password: plain-password-1d2e
"""


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


UP = "upstreams.moex-ntb"


def base() -> dict[str, Any]:
    """A minimal valid config as data; tests change a copy of it."""
    return copy.deepcopy(yaml.safe_load(MINIMAL_YAML))


def upstream(data: dict[str, Any]) -> dict[str, Any]:
    return data["upstreams"]["moex-ntb"]
