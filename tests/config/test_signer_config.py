"""``signer`` is a tagged union on ``type``: each signer type takes only its own fields."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sidecar.config import ConfigError, validate_config
from sidecar.config.auth import CommandSigning, NcaNodeSigning, Pkcs7Signing
from sidecar.config.errors import SetupError
from sidecar.signing import make_signer
from tests.helpers.config_files import write

AUTH = "upstreams.mpt.auth"


def _config(signer: dict[str, Any]) -> dict[str, Any]:
    return {
        "upstreams": {
            "mpt": {
                "match": ["stage.ismet.kz"],
                "target": "https://stage.ismet.kz",
                "auth": {
                    "type": "mpt_signin",
                    "base_url": "https://stage.ismet.kz/api/v3/true-api",
                    "signer": signer,
                },
            }
        }
    }


def _problems(signer: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        validate_config(_config(signer))
    return info.value.problems


@pytest.fixture
def pem(tmp_path: Path) -> Path:
    return write(tmp_path / "signer.pem", "-----BEGIN CERTIFICATE-----\n")


def test_each_type_builds_its_own_block(pem: Path) -> None:
    def signer(block: dict[str, Any]) -> object:
        return validate_config(_config(block)).upstreams["mpt"].auth.signer  # type: ignore[union-attr]

    pkcs7 = signer({"type": "pkcs7", "cert_file": str(pem), "key_file": str(pem)})
    command = signer({"type": "command", "command": {"argv": ["sign"]}, "detached": True})
    ncanode = signer({"type": "ncanode", "ncanode": {"p12_file": str(pem), "p12_password": "x"}})
    assert isinstance(pkcs7, Pkcs7Signing) and pkcs7.digest == "sha256"
    assert isinstance(command, CommandSigning) and command.detached is True
    assert isinstance(ncanode, NcaNodeSigning) and ncanode.ncanode.url.startswith("http://")


@pytest.mark.parametrize(
    ("signer", "stray"),
    [
        ({"type": "command", "command": {"argv": ["sign"]}, "cert_file": "/k"}, "cert_file"),
        ({"type": "command", "command": {"argv": ["sign"]}, "digest": "sha512"}, "digest"),
        ({"type": "ncanode", "ncanode": {"p12_file": "/k", "p12_password": "x"},
          "command": {"argv": ["sign"]}}, "command"),
        ({"type": "pkcs7", "p12_file": "/k", "ncanode": {}}, "ncanode"),
    ],
)
def test_a_field_of_another_type_is_unknown(
    signer: dict[str, Any], stray: str, pem: Path
) -> None:
    for block in (signer, signer.get("ncanode") or {}):
        if "p12_file" in block:
            block["p12_file"] = str(pem)
    line = f"{AUTH}.signer.{stray}: unknown field"
    assert any(p.startswith(line) for p in _problems(signer)), _problems(signer)


@pytest.mark.parametrize(
    ("kind", "missing"), [("command", "command"), ("ncanode", "ncanode")]
)
def test_the_type_block_is_required(kind: str, missing: str) -> None:
    assert _problems({"type": kind}) == [f"{AUTH}.signer.{missing}: is required"]


def test_pkcs7_needs_a_key() -> None:
    assert _problems({"type": "pkcs7"}) == [
        f"{AUTH}.signer: a pkcs7 signer needs cert_file and key_file, or p12_file"
    ]


def test_unknown_signer_type_lists_the_signer_types() -> None:
    assert _problems({"type": "gost"}) == [
        f"{AUTH}.signer: unknown type 'gost'; expected one of command, ncanode, pkcs7"
    ]


def test_ncanode_v2_refuses_detached(pem: Path) -> None:
    block = {"type": "ncanode", "ncanode": {"p12_file": str(pem), "p12_password": "x",
                                            "version": 2}}
    signer = validate_config(_config(block)).upstreams["mpt"].auth.signer  # type: ignore[union-attr]
    with pytest.raises(SetupError, match="version 2 cannot make detached"):
        make_signer(signer, detached_default=True)
