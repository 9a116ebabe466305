"""The NCANode signer against the emulated NCANode: the CMS verifies with openssl."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sidecar.config.auth import NcaNodeSignerConfig, NcaNodeSigning
from sidecar.config.errors import SetupError
from sidecar.sandbox.cms import CmsInvalid, verify_cms
from sidecar.sandbox.ncanode import NcaNode, start_ncanode
from sidecar.sandbox.pki import IssuedCert, Pki
from sidecar.sandbox.servers import TlsServer
from sidecar.signing import SigningError, make_signer


@pytest.fixture
async def node() -> AsyncIterator[tuple[NcaNode, TlsServer]]:
    emulator, server = await start_ncanode()
    try:
        yield emulator, server
    finally:
        await server.stop()


def _signer(server: TlsServer, key: IssuedCert, version: int, password: str | None = None,
            detached: bool = False) -> NcaNodeSigning:
    return NcaNodeSigning(
        type="ncanode",
        ncanode=NcaNodeSignerConfig(
            url=server.url, p12_file=key.p12_file,
            p12_password=password or key.p12_password, version=version,  # type: ignore[arg-type]
        ),
        detached=detached,
    )


@pytest.mark.parametrize(("version", "detached"), [(3, False), (3, True), (2, False)])
async def test_ncanode_cms_verifies(
    node: tuple[NcaNode, TlsServer], tmp_path: Path, version: int, detached: bool
) -> None:
    pki = Pki(tmp_path)
    key = pki.issue_client("nca", "nca-user")
    signer = make_signer(_signer(node[1], key, version, detached=detached),
                         detached_default=False)
    data = "Вызов ИС МПТ 7Q2KZ\n".encode()
    der = await signer.sign(data)
    await signer.close()
    verified = await verify_cms(der, ca_file=pki.ca_file,
                                detached_content=data if detached else None)
    assert verified.content == data and "CN=nca-user" in verified.signer.subject.rfc4514_string()
    if detached:  # the data must really be left out, not just also given
        with pytest.raises(CmsInvalid):
            await verify_cms(der, ca_file=pki.ca_file)


async def test_ncanode_v2_refuses_detached(node: tuple[NcaNode, TlsServer], tmp_path: Path) -> None:
    key = Pki(tmp_path).issue_client("nca", "nca-user")
    with pytest.raises(SetupError, match="version 2 cannot make detached"):
        make_signer(_signer(node[1], key, 2, detached=True), detached_default=True)


@pytest.mark.parametrize("version", [3, 2])
async def test_ncanode_errors_are_clear(
    node: tuple[NcaNode, TlsServer], tmp_path: Path, version: int
) -> None:
    key = Pki(tmp_path).issue_client("nca", "nca-user")
    signer = make_signer(_signer(node[1], key, version, password="Wr0ng-P4ss!"),
                         detached_default=False)
    with pytest.raises(SigningError) as caught:
        await signer.sign(b"x")
    await signer.close()
    assert "NCANode" in caught.value.reason
    assert "password" in caught.value.reason.lower()  # NCANode's own words
    assert "Wr0ng-P4ss!" not in caught.value.reason


async def test_ncanode_down_or_hanging(node: tuple[NcaNode, TlsServer], tmp_path: Path) -> None:
    key = Pki(tmp_path).issue_client("nca", "nca-user")
    cfg = _signer(node[1], key, 3)
    assert cfg.ncanode is not None
    hanging = make_signer(
        cfg.model_copy(update={"ncanode": cfg.ncanode.model_copy(update={"timeout": 0.5})}),
        detached_default=False,
    )
    node[0].hang(True)
    with pytest.raises(SigningError, match="did not answer within"):
        await hanging.sign(b"x")
    node[0].hang(False)
    await hanging.close()
    down = make_signer(
        cfg.model_copy(update={"ncanode": cfg.ncanode.model_copy(
            update={"url": "http://127.0.0.1:1"})}),
        detached_default=False,
    )
    with pytest.raises(SigningError, match="cannot reach NCANode"):
        await down.sign(b"x")
    await down.close()
