"""The ``store`` block: memory by default; redis needs a URL and a 32-byte key, and every
error names the field and the fix."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import pytest

from sidecar.config import ConfigError, validate_config

BASE: dict[str, Any] = {
    "upstreams": {
        "a": {"match": ["a.example"], "target": "https://a.example",
              "auth": {"type": "static", "token": "x"}},
    },
}


@pytest.fixture
def key(tmp_path: Path) -> Path:
    path = tmp_path / "key"
    path.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    return path


def _error(store: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        validate_config(BASE | {"store": store})
    return str(info.value)


def test_memory_is_the_default() -> None:
    assert validate_config(BASE).store.type == "memory"


def test_redis_store_with_raw_and_base64_keys(tmp_path: Path, key: Path) -> None:
    raw = tmp_path / "raw"
    raw.write_bytes(os.urandom(32))
    password = tmp_path / "password"
    password.write_text("s3cret\n")
    config = validate_config(BASE | {"store": {
        "type": "redis", "url": "redis://redis.auth.svc:6379/0", "username": "sidecar",
        "password_file": str(password), "encryption_key_file": str(key),
        "previous_key_files": [str(raw)],
    }})
    store = config.store
    assert store.key_prefix == "authsidecar" and store.timeout == 0.2
    assert store.password is not None and store.password.get_secret_value() == "s3cret"
    assert store.keys() == [base64.b64decode(key.read_text()), raw.read_bytes()]


@pytest.mark.parametrize(("store", "expected"), [
    ({"type": "redis", "encryption_key_file": "KEY"}, "store.url: type redis needs url"),
    ({"type": "redis", "url": "redis://h:6379/0"}, "store.encryption_key_file: type redis"),
    ({"type": "redis", "url": "https://h", "encryption_key_file": "KEY"},
     "store.url: expected redis://"),
    ({"type": "redis", "url": "redis://u:pw@h/0", "encryption_key_file": "KEY"},
     "use username and password"),
    ({"type": "redis", "url": "redis://h/0", "encryption_key_file": "KEY", "tls": {}},
     "store.tls: only for rediss://"),
    ({"type": "redis", "url": "redis://h/0", "encryption_key_file": "SHORT"},
     "store.encryption_key_file: "),
    ({"type": "redis", "url": "redis://h/0", "encryption_key_file": "KEY",
      "previous_key_files": ["SHORT"]}, "store.previous_key_files[0]: "),
    ({"type": "valkey"}, "store.type"),
    ({"key_prefix": "has space"}, "store.key_prefix"),
])
def test_errors_name_the_field_and_the_fix(
    tmp_path: Path, key: Path, store: dict[str, Any], expected: str
) -> None:
    short = tmp_path / "short"
    short.write_text("not a key")
    paths = {"KEY": str(key), "SHORT": str(short)}
    store = {k: paths.get(v, v) if isinstance(v, str) else v for k, v in store.items()}
    if "previous_key_files" in store:
        store["previous_key_files"] = [str(short)]
    message = _error(store)
    assert expected in message
    if "SHORT" in str(store) or str(short) in str(store):
        assert "openssl rand -base64 32" in message


def test_redis_tls_takes_pem_files_not_pkcs12(tmp_path: Path, key: Path) -> None:
    p12 = tmp_path / "client.p12"
    p12.write_bytes(b"\x30\x82")
    message = _error({"type": "redis", "url": "rediss://redis:6380/0",
                      "encryption_key_file": str(key),
                      "tls": {"p12_file": str(p12), "p12_password": "x"}})
    assert "store.tls.p12_file" in message and "cert_file" in message
