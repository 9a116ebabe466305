"""The NCANode emulator over real HTTP: v3, v2 and v1 signing, errors as NCANode answers them,
and the sandbox controls. Signatures are checked with the real ``openssl cms -verify``."""

from __future__ import annotations

import asyncio
import base64
import subprocess
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.serialization import pkcs7

from sidecar.sandbox import ncanode
from sidecar.sandbox.ncanode import NcaNode, java_b64decode, start_ncanode
from sidecar.sandbox.pki import IssuedCert, Pki
from sidecar.sandbox.servers import TlsServer

OPENSSL = "/usr/bin/openssl"
# Bytes that a text-mode signer would mangle: LF, CR LF, NUL and non-ASCII.
CONTENT = b"line one\nline two\r\n\x00\xff\xd0\xb4\xd0\xb0"


@dataclass
class Node:
    node: NcaNode
    server: TlsServer
    http: aiohttp.ClientSession
    pki: Pki
    rsa: IssuedCert
    tmp: Path

    async def post(self, path: str, payload: Any) -> tuple[int, dict[str, Any]]:
        async with self.http.post(self.server.url + path, json=payload) as resp:
            assert resp.content_type == "application/json"
            return resp.status, await resp.json()

    def v3_request(self, cert: IssuedCert | None = None, **overrides: Any) -> dict[str, Any]:
        cert = cert or self.rsa
        signer = {"key": p12_b64(cert), "password": cert.p12_password, "keyAlias": None}
        body = {
            "data": b64(CONTENT),
            "signers": [signer],
            "withTsp": False,
            "tsaPolicy": None,
            "detached": False,
        }
        return {**body, **overrides}

    def verify(self, cms_b64: str, content: bytes | None = None) -> bytes:
        """``openssl cms -verify`` against the sandbox CA; returns the signed content."""
        sig = self.tmp / "sig.der"
        sig.write_bytes(base64.b64decode(cms_b64, validate=True))
        out = self.tmp / "out.bin"
        args = [OPENSSL, "cms", "-verify", "-binary", "-inform", "DER", "-in", str(sig)]
        args += ["-CAfile", str(self.pki.ca_file), "-purpose", "any", "-out", str(out)]
        if content is not None:
            (self.tmp / "data.bin").write_bytes(content)
            args += ["-content", str(self.tmp / "data.bin")]
        result = subprocess.run(args, capture_output=True, check=False)
        assert result.returncode == 0, result.stderr.decode()
        return out.read_bytes()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def p12_b64(cert: IssuedCert) -> str:
    return b64(cert.p12_file.read_bytes())


@pytest.fixture
async def nca(tmp_path: Path) -> AsyncIterator[Node]:
    pki = Pki(tmp_path / "pki")
    rsa = pki.issue_client("signer", "Test Signer")
    node, server = await start_ncanode()
    try:
        async with aiohttp.ClientSession() as http:
            yield Node(node, server, http, pki, rsa, tmp_path)
    finally:
        await server.stop()


async def test_v3_attached_signature_verifies_and_carries_the_content(nca: Node) -> None:
    assert nca.server.url.startswith("http://127.0.0.1:")
    status, body = await nca.post("/cms/sign", nca.v3_request())
    assert status == 200, body
    assert body["status"] == 200 and body["message"] == "OK"
    assert nca.verify(body["cms"]) == CONTENT  # exact bytes: signed in binary mode
    assert nca.node.stats()["by_version"] == {"v3": 1}


async def test_v3_detached_signature_needs_the_content(nca: Node) -> None:
    status, body = await nca.post("/cms/sign", nca.v3_request(detached=True))
    assert status == 200, body
    assert nca.verify(body["cms"], content=CONTENT) == CONTENT
    with pytest.raises(AssertionError, match=r"[Nn]o content"):
        nca.verify(body["cms"])  # nothing encapsulated


async def test_v3_signs_with_an_ec_key_and_several_signers(nca: Node) -> None:
    ec_cert = nca.pki.issue_client("ec-signer", "EC Signer", key_type="ec")
    request = nca.v3_request(ec_cert)
    status, body = await nca.post("/cms/sign", request)
    assert status == 200, body
    assert nca.verify(body["cms"]) == CONTENT
    request["signers"].append(nca.v3_request()["signers"][0])
    status, body = await nca.post("/cms/sign", request)
    assert status == 200, body
    assert nca.verify(body["cms"]) == CONTENT  # openssl checks every signer
    included = pkcs7.load_der_pkcs7_certificates(base64.b64decode(body["cms"]))
    assert {c.subject.rfc4514_string() for c in included} == {
        ec_cert.cert.subject.rfc4514_string(),
        nca.rsa.cert.subject.rfc4514_string(),
    }
    assert nca.node.stats()["signatures"] == 3


async def test_v3_key_errors_are_500s_as_in_ncanode(nca: Node) -> None:
    bad = nca.v3_request()
    bad["signers"][0]["password"] = "wrong"
    status, body = await nca.post("/cms/sign", bad)
    assert (status, body["status"]) == (500, 500)
    assert body == {
        "status": 500,
        "message": "signers[0]: Key reading error: Password incorrect.",
        "details": None,
    }
    nca.node.detailed_errors = True
    status, body = await nca.post("/cms/sign", bad)
    assert body["details"] == "PKCS12 key store mac invalid - wrong password or corrupted file."

    garbage = nca.v3_request()
    garbage["signers"][0]["key"] = b64(b"not a key store")
    status, body = await nca.post("/cms/sign", garbage)
    assert status == 500 and body["message"] == "signers[0]: Key reading error: Invalid format."


async def test_v3_bad_base64_and_bad_requests(nca: Node) -> None:
    status, body = await nca.post("/cms/sign", nca.v3_request(data="not-base64!"))
    assert (status, body["message"]) == (500, "Illegal base64 character 2d")
    wrapped = b64(CONTENT * 10)
    status, body = await nca.post("/cms/sign", nca.v3_request(data=wrapped[:20] + "\n" + wrapped))
    assert (status, body["message"]) == (500, "Illegal base64 character a")

    bad_key = nca.v3_request()
    bad_key["signers"][0]["key"] = "%%%"
    status, body = await nca.post("/cms/sign", bad_key)
    assert status == 500 and "Invalid Base64 format" in body["message"]

    # Bean validation fails before NCANode's handler: Spring's own error body.
    status, body = await nca.post("/cms/sign", nca.v3_request(signers=[]))
    assert status == 400
    assert body["error"] == "Bad Request" and body["path"] == "/cms/sign" and "message" not in body

    url = nca.server.url + "/cms/sign"
    headers = {"Content-Type": "application/json"}
    async with nca.http.post(url, data=b'{"data": ', headers=headers) as resp:
        assert resp.status == 500
        assert (await resp.json())["message"].startswith("JSON parse error")
    async with nca.http.post(url, data=b"{}", headers={"Content-Type": "text/plain"}) as resp:
        assert resp.status == 415
    async with nca.http.get(url) as resp:
        assert resp.status == 405
    stats = nca.node.stats()
    assert stats["errors"] == 6 and stats["calls"] == 6 and stats["signatures"] == 0  # 405 aside


async def test_v3_with_tsp_fails_offline(nca: Node) -> None:
    status, body = await nca.post("/cms/sign", nca.v3_request(withTsp=True))
    assert status == 500 and "TSP" in body["message"]


async def test_v2_cms_sign(nca: Node) -> None:
    request = {
        "version": "2.0",
        "method": "cms.sign",
        "params": {
            "data": b64(CONTENT),
            "p12array": [{"p12": p12_b64(nca.rsa), "password": nca.rsa.p12_password, "alias": ""}],
        },
    }
    status, body = await nca.post("/", request)
    assert status == 200, body
    assert (body["status"], body["message"]) == (0, "")
    assert nca.verify(body["cms"]) == CONTENT
    assert body["documentSizeBefore"] == len(CONTENT) and body["signerCountAfter"] == 1

    request["params"]["p12array"][0]["password"] = "wrong"
    status, body = await nca.post("/", request)
    assert status == 200  # v2 reports errors in the body
    assert body == {
        "status": 3,
        "httpCode": 400,
        "message": "Api error: PKCS12 key store mac invalid - wrong password or corrupted file.",
    }
    request["params"]["p12array"][0] |= {"password": nca.rsa.p12_password, "alias": "nope"}
    status, body = await nca.post("/", request)
    assert (body["status"], body["httpCode"]) == (5, 500)
    assert body["message"] == "Api error: Certificate with specified alias not found"
    request["params"]["p12array"][0]["alias"] = "signer"
    status, body = await nca.post("/", request)
    assert body["status"] == 0, body

    del request["params"]["data"]
    status, body = await nca.post("/", request)
    assert body["status"] == 3 and body["message"] == "Api error: Field 'data' is required"
    assert nca.node.stats()["by_version"] == {"v2": 5}


async def test_v1_raw_sign_and_rpc_envelope_errors(nca: Node) -> None:
    params = {"raw": b64(CONTENT), "p12": p12_b64(nca.rsa), "password": nca.rsa.p12_password}
    status, body = await nca.post("/", {"version": "1.0", "method": "RAW.sign", "params": params})
    assert status == 200 and body["status"] == 0, body
    assert nca.verify(body["result"]["cms"]) == CONTENT

    wrong = {**params, "password": "wrong"}
    status, body = await nca.post("/", {"version": "1.0", "method": "RAW.sign", "params": wrong})
    assert status == 200 and body["status"] == 3 and "httpCode" not in body
    assert body["message"].startswith('Invalid parameter "p12". Error: PKCS12 key store mac')

    envelopes = [
        ({"method": "RAW.sign"}, 1),
        ({"version": "3.0", "method": "RAW.sign"}, 2),
        ({"version": "1.0", "method": "XML.sign"}, 4),
        ({"version": "1.0", "method": "RAW.sign"}, 6),
        ({"version": "2.0"}, 7),
    ]
    for request, expected in envelopes:
        status, body = await nca.post("/", request)
        assert (status, body["status"]) == (200, expected), request
    assert nca.node.stats()["errors"] == 6


async def test_fail_with_counts_down_and_works_over_http(nca: Node) -> None:
    nca.node.fail_with(503, count=2)
    for _ in range(2):
        status, body = await nca.post("/cms/sign", nca.v3_request())
        assert status == 503 and body["status"] == 503
    status, body = await nca.post("/cms/sign", nca.v3_request())
    assert status == 200

    async with nca.http.post(nca.server.url + "/_sandbox/fail?status=502&count=1") as resp:
        assert (await resp.json()) == {"status": 502, "count": 1}
    rpc = {"version": "2.0", "method": "cms.sign", "params": {}}
    status, body = await nca.post("/", rpc)
    assert status == 502 and body["status"] == 5 and body["httpCode"] == 502
    status, body = await nca.post("/", rpc)
    assert status == 200 and body["status"] == 3  # the real error again: no p12array
    with pytest.raises(ValueError):
        nca.node.fail_with(200)


async def test_hang_holds_calls_until_released_and_latency_applies(nca: Node) -> None:
    nca.node.hang(True)
    pending = asyncio.create_task(nca.post("/cms/sign", nca.v3_request()))
    await asyncio.sleep(0.3)
    assert not pending.done() and nca.node.stats()["in_flight"] == 1
    async with nca.http.post(nca.server.url + "/_sandbox/hang?enabled=0") as resp:
        assert (await resp.json()) == {"hang": False}
    status, _ = await asyncio.wait_for(pending, 5)
    assert status == 200

    async with nca.http.post(nca.server.url + "/_sandbox/settings", json={"latency": 0.3}) as resp:
        assert (await resp.json())["latency"] == 0.3
    loop = asyncio.get_running_loop()
    started = loop.time()
    status, _ = await nca.post("/cms/sign", nca.v3_request())
    assert status == 200 and loop.time() - started >= 0.3


async def test_signing_runs_off_the_event_loop(nca: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    """While one signature is stuck in its worker thread, the server keeps answering."""
    gate = threading.Event()
    real_sign = ncanode._sign

    def slow_sign(*args: Any, **kwargs: Any) -> bytes:
        gate.wait(10)
        return real_sign(*args, **kwargs)

    monkeypatch.setattr(ncanode, "_sign", slow_sign)
    pending = asyncio.create_task(nca.post("/cms/sign", nca.v3_request()))
    try:
        await asyncio.sleep(0.2)
        async with asyncio.timeout(2), nca.http.get(nca.server.url + "/_sandbox/stats") as resp:
            assert (await resp.json())["in_flight"] == 1
        assert not pending.done()
    finally:
        gate.set()
    status, body = await asyncio.wait_for(pending, 5)
    assert status == 200 and nca.verify(body["cms"]) == CONTENT


def test_java_base64_rules() -> None:
    assert java_b64decode("YWJj") == b"abc"
    assert java_b64decode("YWI") == b"ab"  # padding is optional, as in Java
    for text, message in [
        ("YW Jj", "Illegal base64 character 20"),
        ("Y", "Last unit does not have enough valid bits"),
        ("YWI==", "Input byte array has wrong 4-byte ending unit"),
    ]:
        with pytest.raises(ValueError, match=message):
            java_b64decode(text)
