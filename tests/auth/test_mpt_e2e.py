"""ИС МПТ end to end: the sidecar signs the emulated true API's challenge and calls the API."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sidecar.sandbox.mpt import MptApi, start_mpt
from sidecar.sandbox.ncanode import start_ncanode
from sidecar.sandbox.pki import Pki
from sidecar.sandbox.servers import SandboxStack, TlsServer
from tests.helpers.sidecars import SidecarFactory, proxy_url

API = "http://stage.ismet.kz/api/v3/true-api"

# An external signer whose behaviour a file decides: "good", "foreign" (a key from another
# CA) or "fail" (the token device is missing). It signs attached CMS with cryptography.
SIGNER_SCRIPT = """
import sys
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs7
mode_file, good, foreign = sys.argv[1:4]
mode = open(mode_file).read().strip()
if mode == "fail":
    sys.stderr.write("token device not found (slot 0)")
    sys.exit(2)
prefix = good if mode == "good" else foreign
cert = x509.load_pem_x509_certificate(open(prefix + ".crt", "rb").read())
key = serialization.load_pem_private_key(open(prefix + ".key", "rb").read(), None)
data = sys.stdin.buffer.read()
der = pkcs7.PKCS7SignatureBuilder().set_data(data).add_signer(cert, key, hashes.SHA256()).sign(
    serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary])
sys.stdout.buffer.write(der)
"""


class Mpt:
    def __init__(self, api: MptApi, server: TlsServer) -> None:
        self.api, self.server = api, server


@pytest.fixture
async def mpt(sandbox: SandboxStack) -> AsyncIterator[Mpt]:
    api, server = await start_mpt(sandbox.pki)
    try:
        yield Mpt(api, server)
    finally:
        await server.stop()


def mpt_upstream(sandbox: SandboxStack, mpt: Mpt, signer: dict[str, Any],
                 **auth: Any) -> dict[str, Any]:
    return {
        "match": ["stage.ismet.kz"],
        "target": mpt.server.url,
        "tls": {"ca_file": str(sandbox.pki.ca_file)},
        "timeouts": {"token_wait": 5},
        "auth": {"type": "mpt_signin", "base_url": mpt.server.url + "/api/v3/true-api",
                 "signer": signer, "extra_fields": {"inn": "123456789012"},
                 "backoff_cap": 0.5, **auth},
    }


def pkcs7_signer(sandbox: SandboxStack) -> dict[str, Any]:
    cert = sandbox.pki.issue_client("mpt-signer", "ТОО Ромашка")
    return {"type": "pkcs7", "p12_file": str(cert.p12_file), "p12_password": cert.p12_password}


async def _call(session: aiohttp.ClientSession, proxy: str, method: str, url: str,
                **kw: Any) -> tuple[int, Any]:
    async with session.request(method, url, proxy=proxy, **kw) as resp:
        return resp.status, await resp.json(content_type=None)


async def test_get_and_post_reach_the_api_with_a_token_from_a_verified_signature(
    sandbox: SandboxStack, mpt: Mpt, make_sidecar: SidecarFactory
) -> None:
    upstream = mpt_upstream(sandbox, mpt, pkcs7_signer(sandbox))
    sidecar = await make_sidecar(upstreams={"mpt": upstream})
    body = json.dumps({"document_format": "MANUAL", "product_document": "e30="}).encode()
    async with aiohttp.ClientSession() as session:
        status, seen = await _call(session, proxy_url(sidecar), "GET",
                                   f"{API}/cises/info?cis=010463003407001221SxMGorvNuq6Wk")
        assert status == 200
        assert seen["query"] == "cis=010463003407001221SxMGorvNuq6Wk"
        status, posted = await _call(session, proxy_url(sidecar), "POST",
                                     f"{API}/lk/documents/create?pg=milk", data=body,
                                     headers={"Content-Type": "application/json"})
        assert status == 200
    assert posted["body_sha256"] == hashlib.sha256(body).hexdigest()
    token = posted["headers"]["authorization"].removeprefix("Bearer ")
    assert mpt.api.is_token_valid(token)
    claims = mpt.api.introspect(token)
    assert claims is not None and claims["inn"] == "123456789012"
    assert claims["sub"] == "ТОО Ромашка"  # from the verified signer certificate
    stats = mpt.api.stats()
    assert stats["signins"] == 1 and stats["keys_issued"] == 1 and not stats["rejected"]


async def test_challenge_id_spelled_uuid_in_capitals_is_accepted(
    sandbox: SandboxStack, mpt: Mpt, make_sidecar: SidecarFactory
) -> None:
    # MPT's guide writes the field "UUID" in its tables: the flow takes any case.
    mpt.api.uuid_field = "UUID"
    upstream = mpt_upstream(sandbox, mpt, pkcs7_signer(sandbox))
    sidecar = await make_sidecar(upstreams={"mpt": upstream})
    async with aiohttp.ClientSession() as session:
        status, _ = await _call(session, proxy_url(sidecar), "GET", f"{API}/cises/info")
    assert status == 200
    assert mpt.api.stats()["signins"] == 1
    assert mpt.api.last_signin is not None and mpt.api.last_signin["fields"] == {
        "inn": "123456789012"
    }


async def test_jwt_exp_drives_renewal_under_load(
    sandbox: SandboxStack, mpt: Mpt, make_sidecar: SidecarFactory
) -> None:
    mpt.api.token_ttl = 3
    upstream = mpt_upstream(sandbox, mpt, pkcs7_signer(sandbox))
    sidecar = await make_sidecar(upstreams={"mpt": upstream})
    statuses: list[int] = []
    deadline = time.monotonic() + 10
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def client() -> None:
            while time.monotonic() < deadline:
                statuses.append((await _call(session, proxy_url(sidecar), "GET",
                                             f"{API}/cises/info"))[0])

        await asyncio.gather(*(client() for _ in range(10)))
    assert len(statuses) > 200
    assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    stats = mpt.api.stats()
    assert stats["signins"] >= 4  # about one per 1.5-2 s, renewed ahead of exp
    assert stats["unauthorized"] == 0  # never sent an expired token


async def _expect_503(session: aiohttp.ClientSession, proxy: str, *fragments: str) -> None:
    status, body = await _call(session, proxy, "GET", f"{API}/cises/info")
    assert status == 503, body
    assert body["error"] == "no_token" and body["upstream"] == "mpt"
    for fragment in fragments:
        assert fragment in body["message"], body["message"]


async def _expect_recovery(session: aiohttp.ClientSession, proxy: str) -> None:
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        status, _ = await _call(session, proxy, "GET", f"{API}/cises/info")
        if status == 200:
            return
        await asyncio.sleep(0.3)
    raise AssertionError("no recovery")


async def test_signer_failure_and_rejected_signature_give_503_then_recover(
    sandbox: SandboxStack, mpt: Mpt, make_sidecar: SidecarFactory, tmp_path: Path
) -> None:
    good = sandbox.pki.issue_client("mpt-good", "good-signer")
    foreign = Pki(tmp_path / "foreign").issue_client("mpt-foreign", "foreign-signer")
    script, mode = tmp_path / "signer.py", tmp_path / "mode"
    script.write_text(SIGNER_SCRIPT)
    mode.write_text("fail")
    argv = [sys.executable, str(script), str(mode), str(good.cert_file.with_suffix("")),
            str(foreign.cert_file.with_suffix(""))]
    signer = {"type": "command", "command": {"argv": argv, "timeout": 10}}
    upstream = mpt_upstream(sandbox, mpt, signer)
    upstream["auth"]["refused_backoff"] = 0.5  # a refused signature waits 30 s by default
    sidecar = await make_sidecar(upstreams={"mpt": upstream})
    proxy = proxy_url(sidecar)
    async with aiohttp.ClientSession() as session:
        await _expect_503(session, proxy, "signing the MPT challenge failed",
                          "exited 2", "token device not found")
        mode.write_text("foreign")
        await asyncio.sleep(0.6)  # the next attempt after the backoff
        await _expect_503(session, proxy, "403", "Ошибка авторизации")
        mode.write_text("good")
        await _expect_recovery(session, proxy)
    assert mpt.api.stats()["rejected"].get("untrusted_signer", 0) >= 1


async def test_reused_challenge_gives_503_then_recovers(
    sandbox: SandboxStack, mpt: Mpt, make_sidecar: SidecarFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    upstream = mpt_upstream(sandbox, mpt, pkcs7_signer(sandbox))
    upstream["auth"]["refused_backoff"] = 0.5  # a refused sign-in waits 30 s by default
    sidecar = await make_sidecar(upstreams={"mpt": upstream})
    proxy = proxy_url(sidecar)
    async with aiohttp.ClientSession() as session:
        assert (await _call(session, proxy, "GET", f"{API}/cises/info"))[0] == 200
        # A misbehaving cache in front of auth/key hands out the challenge already used.
        issued = mpt.api._new_challenge()
        first = dict(issued)
        mpt.api._spend_challenge(first["uuid"])
        monkeypatch.setattr(mpt.api, "_new_challenge", lambda: dict(first))
        mpt.api.expire_tokens()
        await _expect_503(session, proxy, "403", "already been used")
        monkeypatch.undo()
        await _expect_recovery(session, proxy)
    assert mpt.api.stats()["reused"] >= 1


@pytest.mark.parametrize("version", [3, 2])
async def test_same_flow_with_the_ncanode_signer(
    sandbox: SandboxStack, mpt: Mpt, make_sidecar: SidecarFactory, tmp_path: Path, version: int
) -> None:
    node, node_server = await start_ncanode()
    try:
        key = sandbox.pki.issue_client("nca-key", "ИП Казахстан")
        password_file = tmp_path / "p12-password"
        password_file.write_text(key.p12_password)
        signer = {"type": "ncanode", "ncanode": {
            "url": node_server.url, "p12_file": str(key.p12_file),
            "p12_password_file": str(password_file), "version": version,
        }}
        sidecar = await make_sidecar(upstreams={"mpt": mpt_upstream(sandbox, mpt, signer)})
        async with aiohttp.ClientSession() as session:
            status, seen = await _call(session, proxy_url(sidecar), "GET", f"{API}/cises/info")
        assert status == 200
        claims = mpt.api.introspect(seen["headers"]["authorization"].removeprefix("Bearer "))
        assert claims is not None and claims["sub"] == "ИП Казахстан"
        assert node.stats()["by_version"][f"v{version}"] == 1
    finally:
        await node_server.stop()
